# -*- test-case-name: tests.test_cli -*-
"""
Scaffolding shared by the admin commands (C{trackermail} and the commands
other modules add to it): errors, running a body on a started store, a
progress bar.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from twisted.internet.defer import Deferred

from trackermail.config import Config, find_config, load_config
from trackermail.errors import TrackerError
from trackermail.store.schema import current_version

# sysexits.h, for the MTA pipe (deliver): which failures bounce and which retry.
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75
# What a tool killed by SIGPIPE reports: its reader went away (`| head`).
EXIT_PIPE_CLOSED = 141


class CommandError(TrackerError):
    """A command failed; the message is shown to the user."""


def config_from_args(args) -> Config:
    overrides = {}
    if getattr(args, "database", None):
        overrides["database"] = {"url": args.database}
    return load_config(find_config(getattr(args, "config", None)), overrides,
                       require_fqdn=False)


def sqlite_path(url: str) -> str | None:
    """The file of a C{sqlite:///PATH} URL; None for other databases and memory."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else path


def open_cli_store(config: Config, readonly: bool = False, create: bool = False):
    """
    The store of C{config} for one command. Only C{create} (migrate) may
    bring an SQLite file into being; C{readonly} commands open it read-only.
    """
    from trackermail.store import open_store

    path = sqlite_path(config.database.url)
    if path is not None and not create and not os.path.isfile(path):
        raise CommandError(f"no database at {path}: run 'trackermail migrate' first")
    return open_store(config.database.url, pool_size=1, readonly=readonly)


def run_with_store(config: Config, body: Callable, migrate: bool = False,
                   readonly: bool = False) -> int:
    """
    Run C{body(store)} (async) on a started store under a reactor, and
    return its exit code. Commands that only look pass C{readonly}: they
    never create or change anything, not even a missing database file.
    """
    from twisted.internet import task

    result = {"code": 0}
    store = open_cli_store(config, readonly=readonly, create=migrate)

    async def main(reactor):
        try:
            await store.start()
            if migrate:
                await store.migrate()
            else:
                await check_schema(store)
            code = await body(store)
            result["code"] = code or 0
        finally:
            await store.close()

    def runner(reactor):
        d = Deferred.fromCoroutine(main(reactor))

        def failed(f):
            result["code"] = 1
            if f.check(BrokenPipeError):
                result["pipe"] = f.value
            elif f.check(TrackerError):
                error(f.getErrorMessage())
            else:
                error(f"unexpected error: {f.getErrorMessage()!s}")
                f.printTraceback(file=sys.stderr)

        return d.addErrback(failed)

    try:
        task.react(runner)
    except SystemExit as e:
        if e.code not in (0, None) and "pipe" not in result:
            return int(e.code)
    if "pipe" in result:
        raise result["pipe"]
    return result["code"]


async def check_schema(store) -> None:
    from trackermail.store import schema

    pending = await store.run(schema.pending_versions, store.dialect)
    if pending:
        version = await store.run(current_version, store.dialect)
        raise CommandError(
            f"the database is at schema version {version} and lacks "
            f"{', '.join(str(v) for v in pending)}: run 'trackermail migrate' first"
        )


def error(message: str) -> None:
    line = " ".join(str(message).split())
    sys.stderr.write(f"trackermail: {line}\n")


def quiet_closed_stdout() -> int:
    """
    The reader of our output went away (C{trackermail ... | head -1}): point
    stdout at /dev/null so that Python's last flush cannot complain, and
    end like a tool killed by SIGPIPE, with no message.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_PIPE_CLOSED


def print_lines(lines) -> None:
    """Print one item per line."""
    for line in lines:
        sys.stdout.write(f"{line}\n")


def print_json(value) -> None:
    import json

    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


class Progress:
    """
    A progress bar on a terminal, nothing otherwise.
    """

    def __init__(self, stream, total: int):
        self.stream = stream
        self.total = total
        self.active = bool(total) and getattr(stream, "isatty", lambda: False)()

    def update(self, position: int) -> None:
        if not self.active:
            return
        fraction = min(1.0, position / self.total) if self.total else 0
        filled = int(fraction * 40)
        self.stream.write(f"\r[{'#' * filled}{'.' * (40 - filled)}] {fraction:6.1%}")
        self.stream.flush()

    def done(self) -> None:
        if self.active:
            self.update(self.total)
            self.stream.write("\n")


def format_age(since: float | None, now: float) -> str:
    """How long ago C{since} was, for people: C{42s}, C{17m}, C{5h}; C{-} for none."""
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
