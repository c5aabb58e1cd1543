# -*- test-case-name: tests.outbound.test_cli_outbox -*-
"""
Commands on the outbox: its state (C{trackermail outbox}, and the outbox
part of C{trackermail status}), and putting deferred or failed deliveries
back in the queue (C{trackermail requeue outbox [--failed] [ID ...]}).
"""

from __future__ import annotations

import time

from trackermail.cli_support import (
    CommandError,
    format_age,
    run_with_store,
)
from trackermail.store.outbox_report import (
    OutboxReport,
    outbox_report,
    requeue_deliveries,
)


def _until(when: float | None, now: float) -> str:
    """How long until C{when}, for people: C{in 25s}, C{5m ago}."""
    if when is None:
        return "-"
    if when >= now:
        return "in " + format_age(now, when)
    return format_age(when, now) + " ago"


def _shorten(text: str, width: int = 100) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def report_lines(report: OutboxReport, now: float, detail: bool = True) -> list[str]:
    """The outbox as lines of text (C{detail}: with the deliveries in flight)."""
    s = report.summary
    lines = []
    if report.claims:
        lines.append("in flight, by node (lease ends):")
        for c in report.claims:
            lines.append(f"  {c.node or '?'}: {c.count} ({_until(c.first_expiry, now)}"
                         + (f" .. {_until(c.last_expiry, now)}" if c.last_expiry != c.first_expiry
                            else "") + ")")
        if detail:
            for f in report.in_flight:
                lines.append(f"  #{f.id} {f.recipient} on {f.node}, attempt {f.attempts},"
                             f" lease ends {_until(f.claimed_until, now)}")
            if s.sending > len(report.in_flight):
                lines.append(f"  ... and {s.sending - len(report.in_flight)} more")
    if report.deferred:
        lines.append("deferred, by last error (next try):")
        for g in report.deferred:
            lines.append(f"  {g.count:>7}  {g.code} {_shorten(g.error)}"
                         f" ({_until(g.next_attempt, now)})")
    if report.failed:
        lines.append("failed, by last error:")
        for g in report.failed:
            lines.append(f"  {g.count:>7}  {g.code} {_shorten(g.error)}")
    return lines


async def print_outbox_status(store, now: float) -> None:
    """The outbox part of C{trackermail status}."""
    report = await store.run(outbox_report, now, 10)
    s = report.summary
    print(f"outbox queued {s.queued}, sending {s.sending}, sent {s.sent}, failed {s.failed}, "
          f"due now {report.due}, oldest due {format_age(s.oldest_due, now)}")
    for line in report_lines(report, now, detail=False):
        print(f"  {line}")


def cmd_outbox(args, config):
    async def body(store):
        now = time.time()
        report = await store.run(outbox_report, now)
        s = report.summary
        print(f"queued   {s.queued}")
        print(f"sending  {s.sending}")
        print(f"sent     {s.sent}")
        print(f"failed   {s.failed}")
        print(f"due now  {report.due}")
        print(f"oldest due  {format_age(s.oldest_due, now)}")
        for line in report_lines(report, now):
            print(line)

    return run_with_store(config, body)


def requeue_outbox(args, config):
    """
    C{trackermail requeue outbox [--failed] [ID ...]}: make deferred
    deliveries (all, or the given delivery ids) due now; with C{--failed},
    put failed ones back in the queue too.
    """
    ids = None
    if args.files:
        try:
            ids = sorted({int(i) for i in args.files})
        except ValueError:
            raise CommandError("requeue outbox: delivery ids are numbers, as `trackermail"
                               " outbox` shows them (#123)")

    async def body(store):
        done = await store.run(requeue_deliveries, time.time(), ids, args.failed)
        what = "deferred or failed" if args.failed else "deferred"
        if not done:
            print(f"no {what} deliveries to requeue")
        else:
            print(f"requeued {len(done)} {what} deliveries")
        if ids is not None and len(done) < len(ids):
            missing = sorted(set(ids) - set(done))
            raise CommandError("not {}: {}".format(
                what, ", ".join(f"#{i}" for i in missing)))
        return 0

    return run_with_store(config, body)


def register(add) -> None:
    """Add this module's subcommands through C{add(name, func, help)}."""
    add("outbox", cmd_outbox,
        "show the outbox: counts, deliveries in flight, deferred and failed ones by error")
