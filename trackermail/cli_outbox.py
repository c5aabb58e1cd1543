# -*- test-case-name: tests.test_cli -*-
"""
Commands on the outbox: its state.
"""

from __future__ import annotations

import time

from trackermail.cli_support import (
    format_age,
    run_with_store,
)
from trackermail.store.outbox import outbox_summary


def cmd_outbox(args, config):
    async def body(store):
        now = time.time()
        summary = await store.run(outbox_summary, now)
        print(f"queued   {summary.queued}")
        print(f"sending  {summary.sending}")
        print(f"sent     {summary.sent}")
        print(f"failed   {summary.failed}")
        print(f"oldest due  {format_age(summary.oldest_due, now)}")

    return run_with_store(config, body)


def register(add) -> None:
    """Add this module's subcommands through C{add(name, func, help)}."""
    add("outbox", cmd_outbox, "show the outbox queue")
