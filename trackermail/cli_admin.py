# -*- test-case-name: tests.test_cli -*-
"""
Admin commands on the store: schema, packages, keywords, teams,
subscriptions, counts and news.
"""

from __future__ import annotations

import json
import os
import sys
import time

from trackermail.cli_support import (
    CommandError,
    Progress,
    run_with_store,
)
from trackermail.store.keywords import add_keyword
from trackermail.store.ledger import stats
from trackermail.store.news import news
from trackermail.store.packages import add_package, import_sources
from trackermail.store.schema import current_version
from trackermail.store.subscriptions import dump_subscribers, subscribe, unsubscribe_all
from trackermail.store.teams import add_team, team_add_package


def cmd_migrate(args, config):
    async def body(store):
        version = await store.run(current_version, store.dialect)
        print(f"schema version {version}")

    return run_with_store(config, body, migrate=True)


def cmd_add_package(args, config):
    kind = "pseudo" if args.pseudo else "source"

    async def body(store):
        await store.run(add_package, args.source, kind, args.binary or ())
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
        sources, binaries = await store.run(import_sources, entries)
        elapsed = time.monotonic() - started
        print(f"imported {sources} source packages and {binaries} binary mappings "
              f"from {len(entries)} paragraphs in {elapsed:.1f}s")

    return run_with_store(config, body)


def cmd_add_keyword(args, config):
    async def body(store):
        await store.run(add_keyword, args.name, args.default, args.description or "")
        print(f"keyword {args.name}" + (" (default)" if args.default else ""))

    return run_with_store(config, body)


def cmd_add_team(args, config):
    async def body(store):
        await store.run(add_team, args.slug, args.name, args.owner, public=not args.private)
        print(f"team {args.slug}")

    return run_with_store(config, body)


def cmd_team_add_package(args, config):
    async def body(store):
        await store.run(team_add_package, args.slug, args.package)
        print(f"team {args.slug} has package {args.package}")

    return run_with_store(config, body)


def cmd_subscribe(args, config):
    async def body(store):
        new = await store.run(subscribe, args.email, args.package, now=time.time())
        print(f"{args.email} {'subscribed to' if new else 'was already subscribed to'} "
              f"{args.package}")

    return run_with_store(config, body)


def cmd_unsubscribe_all(args, config):
    async def body(store):
        packages = await store.run(unsubscribe_all, args.email)
        if packages:
            print(f"{args.email} unsubscribed from {', '.join(packages)}")
        else:
            print(f"{args.email} had no subscriptions")

    return run_with_store(config, body)


def cmd_dump_subscribers(args, config):
    async def body(store):
        dump = await store.run(dump_subscribers, args.packages)
        json.dump(dump, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")

    return run_with_store(config, body)


def cmd_stats(args, config):
    async def body(store):
        counts = await store.run(stats)
        width = max(len(k) for k in counts.__dataclass_fields__)
        for key in counts.__dataclass_fields__:
            print(f"{key.replace('_', ' '):<{width}}  {getattr(counts, key)}")

    return run_with_store(config, body)


def cmd_news(args, config):
    async def body(store):
        items = await store.run(news, args.package, args.limit)
        for item in items:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(item.created))
            print(f"{when}  {item.package:<20}  {item.title}  ({item.created_by})")
        if not items:
            print("no news")

    return run_with_store(config, body)


def register(add) -> None:
    """Add this module's subcommands through C{add(name, func, help)}."""
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
    add("stats", cmd_stats, "print counts of what the store holds")
    p = add("news", cmd_news, "list news items")
    p.add_argument("package", nargs="?")
    p.add_argument("--limit", type=int, default=50)
