# -*- test-case-name: tests.test_cli -*-
"""
The C{trackermail} admin command.

Exit codes: 0 success, 1 failure with one line on stderr, 2 usage
(C{deliver} follows sysexits for its MTA). A closed output pipe
(C{trackermail list-packages | head}) ends it quietly with 141.
"""

from __future__ import annotations

import argparse
import sys

from trackermail import cli_admin, cli_bounces, cli_mail, cli_outbox, importer
from trackermail.cli_support import (
    config_from_args,
    error,
    quiet_closed_stdout,
)
from trackermail.errors import ConfigError, TrackerError

# ---------------------------------------------------------------------------
# Commands


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("trackermail")
    except PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "unknown"


def _global_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", default=default,
                        help="TOML configuration (default: $TRACKERMAIL_CONFIG, "
                             "else ./tracker.toml if present)")
    parser.add_argument("--database", metavar="URL", default=default,
                        help="override [database] url (sqlite:///PATH or postgresql://...)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackermail",
        description="Administer a trackermail installation.",
    )
    _global_options(parser, None)
    parser.add_argument("--version", action="version",
                        version=f"trackermail {version()}")
    # The same options after the command; SUPPRESS keeps a value given
    # before it when they are not repeated.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help):
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    for module in (cli_admin, importer, cli_mail, cli_outbox, cli_bounces):
        module.register(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run(argv)
        # Output to a pipe is buffered: a reader that left shows up here.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return quiet_closed_stdout()


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse gives a list positional its (empty) share at its first
    # chance: in `set-keywords EMAIL --team qa + vcs` the words after the
    # option come back here, and belong to that list.
    rest = getattr(args, "rest_into", None)
    if extras and rest and not any(e.startswith("-") and e != "-" for e in extras):
        setattr(args, rest, list(getattr(args, rest)) + extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        config = config_from_args(args)
    except ConfigError as e:
        error(str(e))
        return getattr(args, "config_error_status", 1)
    try:
        return args.func(args, config) or 0
    except (ConfigError, TrackerError) as e:
        error(str(e))
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
