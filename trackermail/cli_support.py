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

from trackermail.config import Config, load_config
from trackermail.errors import TrackerError
from trackermail.store.schema import current_version

EX_TEMPFAIL = 75


class CommandError(TrackerError):
    """A command failed; the message is shown to the user."""


def config_from_args(args) -> Config:
    path = args.config
    if path is None and os.path.exists("tracker.toml"):
        path = "tracker.toml"
    overrides = {}
    if args.database:
        overrides["database"] = {"url": args.database}
    return load_config(path, overrides, require_fqdn=False)


def open_cli_store(config: Config):
    from trackermail.store import open_store

    return open_store(config.database.url, pool_size=1)


def run_with_store(config: Config, body: Callable, migrate: bool = False) -> int:
    """
    Run C{body(store)} (async) on a started store under a reactor, and
    return its exit code.
    """
    from twisted.internet import task

    result = {"code": 0}

    async def main(reactor):
        store = open_cli_store(config)
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
            if f.check(TrackerError):
                error(f.getErrorMessage())
            else:
                error(f"unexpected error: {f.getErrorMessage()!s}")
                f.printTraceback(file=sys.stderr)

        return d.addErrback(failed)

    try:
        task.react(runner)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code)
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
