# -*- test-case-name: tests.test_cli -*-
"""
The C{trackermail} admin command.

Exit codes: 0 success, 1 failure with one line on stderr, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

from trackermail.cli_support import (
    EX_TEMPFAIL,
    CommandError,
    Progress,
    config_from_args,
    error,
    run_with_store,
)
from trackermail.config import Config
from trackermail.errors import ConfigError, TrackerError

# ---------------------------------------------------------------------------
# Commands


def cmd_migrate(args, config):
    async def body(store):
        version = await store.schema_version()
        print(f"schema version {version}")

    return run_with_store(config, body, migrate=True)


def cmd_add_package(args, config):
    kind = "pseudo" if args.pseudo else "source"

    async def body(store):
        await store.add_package(args.source, kind, args.binary or ())
        print(f"{kind} package {args.source}" +
              (f" with binaries {', '.join(args.binary)}" if args.binary else ""))

    return run_with_store(config, body)


def cmd_import_sources(args, config):
    from trackermail.sources import open_index, read_index

    size = os.path.getsize(args.file) if os.path.exists(args.file) else 0
    bar = Progress(sys.stderr, size)
    started = time.monotonic()
    stream = open_index(args.file)
    try:
        entries = list(read_index(stream, progress=bar.update))
    except (OSError, EOFError) as e:
        raise CommandError(f"{args.file}: cannot read: {e}")
    finally:
        stream.close()
    bar.done()
    if not entries:
        raise CommandError(f"{args.file}: no package paragraphs found")

    async def body(store):
        sources, binaries = await store.import_sources(entries)
        elapsed = time.monotonic() - started
        print(f"imported {sources} source packages and {binaries} binary mappings "
              f"from {len(entries)} paragraphs in {elapsed:.1f}s")

    return run_with_store(config, body)


def cmd_add_keyword(args, config):
    async def body(store):
        await store.add_keyword(args.name, args.default, args.description or "")
        print(f"keyword {args.name}" + (" (default)" if args.default else ""))

    return run_with_store(config, body)


def cmd_add_team(args, config):
    async def body(store):
        await store.add_team(args.slug, args.name, args.owner, public=not args.private)
        print(f"team {args.slug}")

    return run_with_store(config, body)


def cmd_team_add_package(args, config):
    async def body(store):
        await store.team_add_package(args.slug, args.package)
        print(f"team {args.slug} has package {args.package}")

    return run_with_store(config, body)


def cmd_subscribe(args, config):
    async def body(store):
        new = await store.subscribe(args.email, args.package, now=time.time())
        print(f"{args.email} {'subscribed to' if new else 'was already subscribed to'} "
              f"{args.package}")

    return run_with_store(config, body)


def cmd_unsubscribe_all(args, config):
    async def body(store):
        packages = await store.unsubscribe_all(args.email)
        if packages:
            print(f"{args.email} unsubscribed from {', '.join(packages)}")
        else:
            print(f"{args.email} had no subscriptions")

    return run_with_store(config, body)


def cmd_dump_subscribers(args, config):
    async def body(store):
        dump = await store.dump_subscribers(args.packages)
        json.dump(dump, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")

    return run_with_store(config, body)


def cmd_stats(args, config):
    async def body(store):
        stats = await store.stats()
        width = max(len(k) for k in stats.__dataclass_fields__)
        for key in stats.__dataclass_fields__:
            print(f"{key.replace('_', ' '):<{width}}  {getattr(stats, key)}")

    return run_with_store(config, body)


def cmd_news(args, config):
    async def body(store):
        items = await store.news(args.package, args.limit)
        for item in items:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(item.created))
            print(f"{when}  {item.package:<20}  {item.title}  ({item.created_by})")
        if not items:
            print("no news")

    return run_with_store(config, body)


def cmd_analyze_bounce(args, config):
    from trackermail.bounces.report import analyze_bounce_main

    return analyze_bounce_main(args.files, sys.stdout)


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


def _age(since: float | None, now: float) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def cmd_outbox(args, config):
    async def body(store):
        now = time.time()
        summary = await store.outbox_summary(now)
        print(f"queued   {summary.queued}")
        print(f"sending  {summary.sending}")
        print(f"sent     {summary.sent}")
        print(f"failed   {summary.failed}")
        print(f"oldest due  {_age(summary.oldest_due, now)}")

    return run_with_store(config, body)


def cmd_status(args, config):
    now = time.time()
    counts = _spool_counts(config)
    print(f"spool {os.path.abspath(config.spool.path)}")
    for sub, (n, oldest) in counts.items():
        print(f"  {sub:<7} {n:>6}  oldest {_age(oldest, now)}")
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
                  f"{_age(now, state.get('next', now))}: {state.get('reason', '')}".rstrip(": "))
        except (OSError, ValueError, AttributeError):
            continue

    async def body(store):
        summary = await store.outbox_summary(now)
        print(f"outbox queued {summary.queued}, sending {summary.sending}, "
              f"sent {summary.sent}, failed {summary.failed}, "
              f"oldest due {_age(summary.oldest_due, now)}")

    return run_with_store(config, body)


def cmd_requeue(args, config):
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


COMMANDS: dict[str, Callable] = {}


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

    add("migrate", cmd_migrate, "create or upgrade the database schema")
    p = add("add-package", cmd_add_package, "create a source or pseudo package")
    p.add_argument("source")
    p.add_argument("--binary", action="append", metavar="NAME",
                   help="a binary package built from it (repeatable)")
    p.add_argument("--pseudo", action="store_true", help="a pseudo package")
    p = add("import-sources", cmd_import_sources,
            "import a Debian Sources or Packages index (plain, .gz, .xz)")
    p.add_argument("file")
    p = add("add-keyword", cmd_add_keyword, "create a keyword")
    p.add_argument("name")
    p.add_argument("--default", action="store_true", help="on by default for new users")
    p.add_argument("--description", default="")
    p = add("add-team", cmd_add_team, "create a team")
    p.add_argument("slug")
    p.add_argument("--name", required=True)
    p.add_argument("--owner", required=True, metavar="EMAIL")
    p.add_argument("--private", action="store_true")
    p = add("team-add-package", cmd_team_add_package, "add a package to a team")
    p.add_argument("slug")
    p.add_argument("package")
    p = add("subscribe", cmd_subscribe, "subscribe EMAIL to PKG without confirmation")
    p.add_argument("package")
    p.add_argument("email")
    p = add("unsubscribe-all", cmd_unsubscribe_all, "remove every subscription of EMAIL")
    p.add_argument("email")
    p = add("dump-subscribers", cmd_dump_subscribers,
            "print package -> subscribers as JSON")
    p.add_argument("packages", nargs="*", metavar="PKG")
    from trackermail.importer import cmd_import_distro_tracker, configure_parser

    p = add("import-distro-tracker", cmd_import_distro_tracker,
            "import a distro-tracker subscriber dump (JSON, plain or UDD format)")
    configure_parser(p)
    add("stats", cmd_stats, "print counts of what the store holds")
    p = add("news", cmd_news, "list news items")
    p.add_argument("package", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p = add("process", cmd_process, "run mail files through the processor once")
    p.add_argument("files", nargs="+", metavar="FILE")
    p = add("deliver", cmd_deliver,
            "MTA pipe: store one message from stdin in the spool (exit 75 on failure)")
    p.add_argument("recipient", nargs="?", help="the delivery address (else $RECIPIENT)")
    add("outbox", cmd_outbox, "show the outbox queue")
    add("status", cmd_status, "show spool and outbox counts, ages and retries")
    p = add("requeue", cmd_requeue, "move failed/ or broken/ messages back to new/")
    p.add_argument("where", choices=["failed", "broken"])
    p.add_argument("files", nargs="*", metavar="FILE")
    p = add("analyze-bounce", cmd_analyze_bounce,
            "analyze mail files as bounces: one JSON line per file")
    p.add_argument("files", nargs="+", metavar="FILE")
    for name, (func, help, configure) in COMMANDS.items():
        p = add(name, func, help)
        configure(p)
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
