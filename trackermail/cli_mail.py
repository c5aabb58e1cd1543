# -*- test-case-name: tests.test_cli -*-
"""
Commands on the mail path: running mail files through the processor, the
MTA pipe into the spool, the spool's state, putting parked mail back, and
reading bounces.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from trackermail.cli_outbox import print_outbox_status, requeue_outbox
from trackermail.cli_support import (
    EX_DATAERR,
    EX_NOUSER,
    EX_TEMPFAIL,
    CommandError,
    error,
    format_age,
    run_with_store,
)
from trackermail.config import Config


def cmd_process(args, config):
    from trackermail.errors import PermanentFailure, TemporaryFailure
    from trackermail.service import build_processor

    async def body(store):
        from twisted.internet import reactor

        processor = build_processor(_processing_config(config), store, reactor)
        code = 0
        for path in args.files:
            try:
                outcomes = await processor.process_file(path)
            except PermanentFailure as e:
                print(f"{path}: failed: {e}")
                code = 1
            except TemporaryFailure as e:
                print(f"{path}: temporary failure: {e}")
                code = 1
            else:
                for outcome in outcomes:
                    print(f"{path}: {outcome.action} {outcome.detail}".rstrip())
        return code

    return run_with_store(config, body)


def _processing_config(config: Config) -> Config:
    if not config.tracker.fqdn:
        raise CommandError("[tracker] fqdn: required to process mail")
    return config


_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")


def looks_like_mail(data: bytes) -> bool:
    """Whether C{data} starts like a message: a header field (after an mbox From line)."""
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    return bool(_HEADER_LINE.match(data))


def cmd_deliver(args, config):
    """
    MTA pipe transport: one message on stdin into the spool, with sysexits
    status for the MTA: 0 once it is durable; 67 (EX_NOUSER, bounced) for
    an address that is not ours; 65 (EX_DATAERR, bounced) for input that
    is no mail; 75 (EX_TEMPFAIL, retried) when it cannot be stored, and
    also when the tracker is not configured to tell (a mistake of ours must
    not bounce people's mail: Postfix bounces EX_CONFIG).
    """
    from trackermail.ingress.spool import Spool
    from trackermail.routing import Rejection, route_address

    # Read everything first: an MTA writing into a pipe we left would
    # report a write error instead of our status.
    try:
        data = sys.stdin.buffer.read()
    except OSError as e:
        error(f"cannot read standard input: {e.strerror or e}")
        return EX_TEMPFAIL
    recipient = args.recipient or os.environ.get("ORIGINAL_RECIPIENT") or os.environ.get(
        "RECIPIENT", "")
    if not recipient:
        error("no recipient: give one, or set RECIPIENT")
        return EX_TEMPFAIL
    if not config.tracker.fqdn:
        error("[tracker] fqdn: required to tell our addresses from others")
        return EX_TEMPFAIL
    try:
        route_address(recipient, config.tracker.fqdn, config.tracker.accept_unqualified)
    except Rejection as e:
        error(f"{recipient}: not an address of this tracker ({e.text})")
        return EX_NOUSER
    if not data.strip():
        error("empty message on standard input")
        return EX_DATAERR
    if not looks_like_mail(data):
        error("standard input is not a mail message (it does not start with a header)")
        return EX_DATAERR
    try:
        spool = Spool(config.spool.path, fsync=config.spool.fsync)
        path = spool.deliver_sync(data, recipient, os.environ.get("SENDER"))
    except Exception as e:
        error(f"cannot store the message in {config.spool.path}: {e}")
        return EX_TEMPFAIL
    print(os.path.basename(path))
    return 0


def cmd_status(args, config):
    now = time.time()
    from trackermail.ingress.spool import retry_states, spool_counts

    print(f"spool {os.path.abspath(config.spool.path)}")
    for sub, (n, oldest) in spool_counts(config.spool.path).items():
        print(f"  {sub:<7} {'-' if n is None else n:>6}  oldest {format_age(oldest, now)}")
    for name, state in retry_states(config.spool.path)[:20]:
        try:
            next_try = float(state.get("next", now))
        except (TypeError, ValueError):
            next_try = now
        print(f"  retry {name}: {state.get('attempts')} failed attempts, next in "
              f"{format_age(now, next_try)}: {state.get('reason', '')}".rstrip(": "))

    async def body(store):
        await print_outbox_status(store, now)

    return run_with_store(config, body)


def cmd_requeue(args, config):
    # FILE... takes what follows the first one as it is (argparse would not
    # take `outbox --failed 12` otherwise): options written there are read here.
    for option in [f for f in args.files if f.startswith("-")]:
        if option != "--failed":
            raise CommandError(f"requeue: unknown option {option}")
        args.failed = True
    args.files = [f for f in args.files if not f.startswith("-")]
    if args.where == "outbox":
        return requeue_outbox(args, config)
    if args.failed:
        raise CommandError("requeue: --failed is for the outbox (requeue outbox --failed)")
    from trackermail.ingress.spool import Spool

    spool = Spool(config.spool.path, fsync=config.spool.fsync)
    moved = spool.requeue(args.where, args.files or None)
    for name in moved:
        print(f"requeued {name}")
    if args.files and len(moved) < len(args.files):
        missing = sorted(set(args.files) - set(moved))
        raise CommandError(f"not in {args.where}/: {', '.join(missing)}")
    if not moved:
        print(f"nothing in {args.where}/")
    return 0


# ---------------------------------------------------------------------------
# Wiring


def cmd_analyze_bounce(args, config):
    from trackermail.bounces.report import analyze_bounce_main

    return analyze_bounce_main(args.files, sys.stdout)


def register(add) -> None:
    """Add this module's subcommands through C{add(name, func, help)}."""
    p = add("process", cmd_process, "run mail files through the processor once")
    p.add_argument("files", nargs="+", metavar="FILE")
    p = add("deliver", cmd_deliver,
            "MTA pipe: store one message from stdin in the spool (exit 0 stored, "
            "67 unknown recipient, 65 not a mail, 75 try again later)")
    p.add_argument("recipient", nargs="?", help="the delivery address (else $RECIPIENT)")
    # A broken configuration is ours to fix: the MTA keeps the mail meanwhile.
    p.set_defaults(config_error_status=EX_TEMPFAIL)
    add("status", cmd_status, "show spool and outbox counts, ages and retries")
    p = add("requeue", cmd_requeue, "move failed/ or broken/ messages back to new/; "
            "outbox: make deferred deliveries due now (--failed: failed ones too)")
    p.add_argument("where", choices=["failed", "broken", "outbox"])
    p.add_argument("files", nargs=argparse.REMAINDER, metavar="FILE",
                   help="spool file names, or delivery ids for the outbox")
    p.add_argument("--failed", action="store_true",
                   help="outbox: also put failed deliveries back in the queue")
    p = add("analyze-bounce", cmd_analyze_bounce,
            "analyze mail files as bounces: one JSON line per file")
    p.add_argument("files", nargs="+", metavar="FILE")
