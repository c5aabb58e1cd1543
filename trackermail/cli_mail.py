# -*- test-case-name: tests.test_cli -*-
"""
Commands on the mail path: running mail files through the processor, the
MTA pipe into the spool, the spool's state, putting parked mail back, and
reading bounces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from trackermail.cli_support import (
    EX_TEMPFAIL,
    CommandError,
    error,
    format_age,
    run_with_store,
)
from trackermail.config import Config
from trackermail.cli_outbox import print_outbox_status, requeue_outbox


def cmd_process(args, config):
    from trackermail.errors import PermanentFailure, TemporaryFailure
    from trackermail.service import build_processor

    async def body(store):
        from twisted.internet import reactor

        processor = build_processor(_processing_config(config), store, reactor)
        code = 0
        for path in args.files:
            try:
                outcome = await processor.process_file(path)
            except PermanentFailure as e:
                print(f"{path}: failed: {e}")
                code = 1
            except TemporaryFailure as e:
                print(f"{path}: temporary failure: {e}")
                code = 1
            else:
                print(f"{path}: {outcome.action} {outcome.detail}".rstrip())
        return code

    return run_with_store(config, body)


def _processing_config(config: Config) -> Config:
    if not config.tracker.fqdn:
        raise CommandError("[tracker] fqdn: required to process mail")
    return config


def cmd_deliver(args, config):
    """
    MTA pipe transport: one message on stdin into the spool. Exit 0 only
    once it is durable; 75 (EX_TEMPFAIL, the MTA retries) otherwise.
    """
    from trackermail.ingress.spool import Spool

    data = sys.stdin.buffer.read()
    recipient = args.recipient or os.environ.get("ORIGINAL_RECIPIENT") or os.environ.get(
        "RECIPIENT", "")
    if not data.strip():
        error("empty message on standard input")
        return 1
    if not recipient:
        error("no recipient: give one, or set RECIPIENT")
        return 1
    try:
        spool = Spool(config.spool.path, fsync=config.spool.fsync)
        path = spool.deliver_sync(data, recipient, os.environ.get("SENDER"))
    except Exception as e:
        error(f"cannot store the message in {config.spool.path}: {e}")
        return EX_TEMPFAIL
    print(os.path.basename(path))
    return 0


def _spool_counts(config: Config) -> dict:
    def count(sub):
        path = os.path.join(config.spool.path, sub)
        try:
            names = [n for n in os.listdir(path) if not n.endswith(".reason")]
        except FileNotFoundError:
            return 0, None
        oldest = None
        for n in names:
            try:
                m = os.stat(os.path.join(path, n)).st_mtime
            except OSError:
                continue
            oldest = m if oldest is None else min(oldest, m)
        return len(names), oldest

    return {sub: count(sub) for sub in ("new", "failed", "broken")}


def cmd_status(args, config):
    now = time.time()
    counts = _spool_counts(config)
    print(f"spool {os.path.abspath(config.spool.path)}")
    for sub, (n, oldest) in counts.items():
        print(f"  {sub:<7} {n:>6}  oldest {format_age(oldest, now)}")
    retry_dir = os.path.join(config.spool.path, "retry")
    try:
        states = sorted(os.listdir(retry_dir))
    except FileNotFoundError:
        states = []
    for name in states[:20]:
        try:
            with open(os.path.join(retry_dir, name), encoding="utf-8") as f:
                state = json.load(f)
            print(f"  retry {name}: {state.get('attempts')} failed attempts, next in "
                  f"{format_age(now, state.get('next', now))}: {state.get('reason', '')}".rstrip(": "))
        except (OSError, ValueError, AttributeError):
            continue

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
    from trackermail.bounces.analyzer import analyze_bounce_main

    return analyze_bounce_main(args.files, sys.stdout)


def register(add) -> None:
    """Add this module's subcommands through C{add(name, func, help)}."""
    p = add("process", cmd_process, "run mail files through the processor once")
    p.add_argument("files", nargs="+", metavar="FILE")
    p = add("deliver", cmd_deliver,
            "MTA pipe: store one message from stdin in the spool (exit 75 on failure)")
    p.add_argument("recipient", nargs="?", help="the delivery address (else $RECIPIENT)")
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
