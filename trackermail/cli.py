# -*- test-case-name: tests.test_cli -*-
"""
The C{trackermail} admin command.

Exit codes: 0 success, 1 failure with one line on stderr, 2 usage.
"""

from __future__ import annotations

import argparse
import sys

from trackermail import cli_admin, cli_bounces, cli_mail, cli_outbox, importer
from trackermail.cli_support import (
    config_from_args,
    error,
)
from trackermail.errors import ConfigError, TrackerError

# ---------------------------------------------------------------------------
# Commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackermail",
        description="Administer a trackermail installation.",
    )
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="TOML configuration (default: ./tracker.toml if present)")
    parser.add_argument("--database", metavar="URL",
                        help="override [database] url (sqlite:///PATH or postgresql://...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    for module in (cli_admin, importer, cli_mail, cli_outbox, cli_bounces):
        module.register(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        return args.func(args, config) or 0
    except (ConfigError, TrackerError) as e:
        error(str(e))
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
