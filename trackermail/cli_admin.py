# -*- test-case-name: tests.test_cli_admin -*-
"""
Admin commands on the store: schema, packages, keywords, teams,
memberships, subscriptions, counts and news.

Named things (packages, keywords, teams) that do not exist are an error;
relations that are already as asked (subscribed, a member, not
subscribed) are said so and succeed. Commands that only look open the
store read-only.
"""

from __future__ import annotations

import os
import sys
import time

from trackermail.cli_support import (
    CommandError,
    Progress,
    print_json,
    print_lines,
    run_with_store,
)
from trackermail.store.keywords import (
    add_keyword,
    builtin_keywords,
    default_keywords,
    keywords,
    remove_keyword,
    set_default_keywords,
)
from trackermail.store.ledger import stats
from trackermail.store.news import news
from trackermail.store.packages import (
    add_package,
    ensure_package,
    get_package,
    import_sources,
    list_packages,
    remove_package,
    resolve_package,
)
from trackermail.store.schema import current_version
from trackermail.store.subscriptions import (
    dump_subscribers,
    set_subscription_keywords,
    subscribe,
    subscription_keywords,
    unsubscribe,
    unsubscribe_all,
)
from trackermail.store.teams import (
    add_team,
    join_team,
    leave_team,
    list_teams,
    membership_keywords,
    remove_team,
    set_membership_keywords,
    set_membership_muted,
    team_add_package,
    team_members,
    team_remove_package,
)

# ---------------------------------------------------------------------------
# Checks composed into the commands' programs (one transaction each).


def require_package(name: str, create: bool | None = None):
    """
    Store program: fail unless package C{name} exists. C{create} True
    creates it (as a name only, like a subscription to an unknown package
    in distro-tracker); False means the command offers C{--create}.
    """
    if (yield from get_package(name)) is not None:
        return
    if create:
        yield from ensure_package(name)
        return
    found = yield from resolve_package(name)
    notes = []
    if found.kind == "binary":
        notes.append(f"{name} is a binary package of {found.source}")
    if create is False:
        notes.append("use --create to create it")
    raise CommandError(f"no package {name}" + (f" ({'; '.join(notes)})" if notes else ""))


def require_keywords(names):
    """Store program: fail naming every keyword that does not exist."""
    known = {k.name for k in (yield from keywords())}
    unknown = sorted(set(names) - known)
    if unknown:
        word = "keyword" if len(unknown) == 1 else "keywords"
        raise CommandError(f"no {word} {', '.join(unknown)} (list-keywords shows them)")


def _each_package(names, program, *args):
    for name in names:
        yield from require_package(name)
    return (yield from program(*args))


# ---------------------------------------------------------------------------
# Schema and packages


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
    try:
        stream = open_index(args.file)
    except OSError as e:
        raise CommandError(f"{args.file}: cannot read: {e.strerror or e}")
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


def cmd_list_packages(args, config):
    async def body(store):
        found = await store.run(list_packages, args.kind)
        if args.json:
            print_json([{"name": p.name, "kind": p.kind, "subscribers": p.subscribers,
                         "binaries": p.binaries} for p in found])
        else:
            print_lines(p.name for p in found)

    return run_with_store(config, body, readonly=True)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def cmd_remove_package(args, config):
    async def body(store):
        gone = await store.run(remove_package, args.package)
        print(f"removed package {gone.name} with {_count(gone.subscriptions, 'subscription')}, "
              f"{_count(gone.teams, 'team link')}, {_count(gone.news, 'news item')} and "
              f"{_count(gone.binaries, 'binary mapping')}")

    return run_with_store(config, body)


# ---------------------------------------------------------------------------
# Keywords


def cmd_add_keyword(args, config):
    async def body(store):
        await store.run(add_keyword, args.name, args.default, args.description or "")
        print(f"keyword {args.name}" + (" (default)" if args.default else ""))

    return run_with_store(config, body)


def cmd_list_keywords(args, config):
    builtin = {k.name for k in builtin_keywords()}

    async def body(store):
        found = await store.run(keywords)
        if args.json:
            print_json([{"name": k.name, "default": k.is_default, "builtin": k.name in builtin,
                         "description": k.description} for k in found])
            return
        width = max((len(k.name) for k in found), default=0)
        print_lines(f"{k.name:<{width}}  {'default' if k.is_default else '-':<7}  "
                    f"{k.description}".rstrip() for k in found)

    return run_with_store(config, body, readonly=True)


def cmd_remove_keyword(args, config):
    if not args.force and args.name in {k.name for k in builtin_keywords()}:
        raise CommandError(f"{args.name} is a built-in keyword (classification uses it): "
                           "use --force to remove it anyway")

    async def body(store):
        sets = await store.run(remove_keyword, args.name)
        print(f"removed keyword {args.name} (it was in {_count(sets, 'keyword set')})")

    return run_with_store(config, body)


def _parse_keyword_change(parser, changes):
    op, names = "=", list(changes)
    if names and names[0] in ("+", "-", "="):
        op = names.pop(0)
    if not names and op != "=" or not changes:
        parser.error("give [+|-|=] and the keywords (= alone empties the set)")
    return op, names


def cmd_set_keywords(args, config):
    op, names = _parse_keyword_change(args.parser, args.changes)
    email, package, team = args.email, args.package, args.team
    if team is None:
        where = f" for {package}" if package else " (default)"
    else:
        where = f" in team {team}" + (f" for {package}" if package else "")

    def change():
        yield from require_keywords(names)
        if package is not None:
            yield from require_package(package)
        if team is not None:
            from trackermail.store.keywords import apply_keyword_op

            current = yield from membership_keywords(team, email, package)
            new = apply_keyword_op(current, op, names)
            yield from set_membership_keywords(team, email, sorted(new), package)
            return new
        if package is not None:
            return (yield from set_subscription_keywords(email, package, op, names))
        return (yield from set_default_keywords(email, op, names))

    async def body(store):
        new = await store.run(change)
        print(f"{email} keywords{where}: {', '.join(sorted(new)) or '(none)'}")

    return run_with_store(config, body)


def cmd_show_keywords(args, config):
    email, package, team = args.email, args.package, args.team

    def show():
        if package is not None:
            yield from require_package(package)
        if team is not None:
            return (yield from membership_keywords(team, email, package))
        if package is not None:
            return (yield from subscription_keywords(email, package))
        return (yield from default_keywords(email))

    async def body(store):
        print_lines(sorted(await store.run(show)))

    return run_with_store(config, body, readonly=True)


# ---------------------------------------------------------------------------
# Teams


def cmd_add_team(args, config):
    async def body(store):
        await store.run(add_team, args.slug, args.name, args.owner, public=not args.private)
        print(f"team {args.slug}")

    return run_with_store(config, body)


def cmd_list_teams(args, config):
    async def body(store):
        found = await store.run(list_teams)
        if args.json:
            print_json([{"slug": t.team.slug, "name": t.team.name, "public": t.team.public,
                         "owner": t.team.owner, "members": t.members,
                         "packages": t.packages} for t in found])
            return
        width = max((len(t.team.slug) for t in found), default=0)
        print_lines(
            f"{t.team.slug:<{width}}  {_count(t.members, 'member')}, "
            f"{_count(t.packages, 'package')}{'' if t.team.public else ', private'}"
            f"  {t.team.name}" for t in found)

    return run_with_store(config, body, readonly=True)


def cmd_remove_team(args, config):
    async def body(store):
        members, packages = await store.run(remove_team, args.slug)
        print(f"removed team {args.slug} with {_count(members, 'member')} and "
              f"{_count(packages, 'package')}")

    return run_with_store(config, body)


def cmd_team_members(args, config):
    async def body(store):
        members = await store.run(team_members, args.slug)
        if args.json:
            print_json([{
                "email": m.email, "muted": m.muted,
                "keywords": None if m.keywords is None else list(m.keywords),
                "packages": {name: {"muted": s.muted,
                                    "keywords": None if s.keywords is None else list(s.keywords)}
                             for name, s in m.packages.items()},
            } for m in members])
            return
        for m in members:
            muted_for = [name for name, s in m.packages.items() if s.muted]
            note = "muted" if m.muted else (
                f"muted for {', '.join(muted_for)}" if muted_for else "")
            print(f"{m.email}  ({note})" if note else m.email)

    return run_with_store(config, body, readonly=True)


def cmd_team_add_package(args, config):
    def add():
        yield from require_package(args.package, args.create)
        yield from team_add_package(args.slug, args.package)

    async def body(store):
        await store.run(add)
        print(f"team {args.slug} has package {args.package}")

    return run_with_store(config, body)


def cmd_team_remove_package(args, config):
    async def body(store):
        had = await store.run(team_remove_package, args.slug, args.package)
        print(f"team {args.slug} {'no longer has' if had else 'did not have'} "
              f"package {args.package}")

    return run_with_store(config, body)


def cmd_team_add_member(args, config):
    async def body(store):
        new = await store.run(join_team, args.slug, args.email)
        print(f"{args.email} {'joined' if new else 'was already a member of'} {args.slug}")

    return run_with_store(config, body)


def cmd_team_remove_member(args, config):
    async def body(store):
        was = await store.run(leave_team, args.slug, args.email)
        print(f"{args.email} {'left' if was else 'was not a member of'} {args.slug}")

    return run_with_store(config, body)


def _mute(muted: bool):
    def command(args, config):
        def change():
            if args.package is not None:
                yield from require_package(args.package)
            yield from set_membership_muted(args.slug, args.email, muted, args.package)

        async def body(store):
            await store.run(change)
            where = f" for {args.package}" if args.package else ""
            print(f"{'muted' if muted else 'unmuted'} {args.email} in {args.slug}{where}")

        return run_with_store(config, body)

    return command


# ---------------------------------------------------------------------------
# Subscriptions, counts, news


def cmd_subscribe(args, config):
    def change():
        yield from require_package(args.package, args.create)
        return (yield from subscribe(args.email, args.package, now=time.time()))

    async def body(store):
        new = await store.run(change)
        print(f"{args.email} {'subscribed to' if new else 'was already subscribed to'} "
              f"{args.package}")

    return run_with_store(config, body)


def cmd_unsubscribe(args, config):
    async def body(store):
        was = await store.run(_each_package, [args.package], unsubscribe,
                              args.email, args.package)
        print(f"{args.email} {'unsubscribed from' if was else 'was not subscribed to'} "
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
        print_json(await store.run(_each_package, args.packages, dump_subscribers,
                                   args.packages))

    return run_with_store(config, body, readonly=True)


def cmd_stats(args, config):
    async def body(store):
        counts = await store.run(stats)
        names = list(counts.__dataclass_fields__)
        if args.json:
            print_json({k: getattr(counts, k) for k in names})
            return
        width = max(len(k) for k in names)
        print_lines(f"{k.replace('_', ' '):<{width}}  {getattr(counts, k)}" for k in names)

    return run_with_store(config, body, readonly=True)


def cmd_news(args, config):
    async def body(store):
        packages = [args.package] if args.package else []
        items = await store.run(_each_package, packages, news, args.package, args.limit)
        for item in items:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(item.created))
            print(f"{when}  {item.package:<20}  {item.title}  ({item.created_by})")
        if not items:
            print("no news")

    return run_with_store(config, body, readonly=True)


# ---------------------------------------------------------------------------
# Wiring


def register(add) -> None:
    """Add this module's subcommands through C{add(name, func, help)}."""

    def with_json(p):
        p.add_argument("--json", action="store_true", help="print JSON for tools")
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
    p = with_json(add("list-packages", cmd_list_packages, "list packages, one per line"))
    p.add_argument("--kind", choices=["source", "pseudo", "other"])
    p = add("remove-package", cmd_remove_package,
            "remove a package with its subscriptions, team links and news")
    p.add_argument("package")

    p = add("add-keyword", cmd_add_keyword, "create a keyword")
    p.add_argument("name")
    p.add_argument("--default", action="store_true", help="on by default for new users")
    p.add_argument("--description", default="")
    with_json(add("list-keywords", cmd_list_keywords,
                  "list keywords: name, default or not, description"))
    p = add("remove-keyword", cmd_remove_keyword, "remove a keyword from every keyword set")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="remove a built-in keyword too")
    for name, func, help in [
        ("set-keywords", cmd_set_keywords,
         "change the keywords of an address: its defaults, a subscription (--package), "
         "a team membership (--team [--package])"),
        ("show-keywords", cmd_show_keywords,
         "print the keywords of an address, a subscription or a team membership"),
    ]:
        p = add(name, func, help)
        p.add_argument("email")
        p.add_argument("--package", metavar="PKG")
        p.add_argument("--team", metavar="SLUG")
        if func is cmd_set_keywords:
            p.add_argument("changes", nargs="*", metavar="[+|-|=] KEYWORD",
                           help="+ adds, - removes, = (the default) replaces")
            p.set_defaults(parser=p, rest_into="changes")

    p = add("add-team", cmd_add_team, "create a team")
    p.add_argument("slug")
    p.add_argument("--name", required=True)
    p.add_argument("--owner", required=True, metavar="EMAIL")
    p.add_argument("--private", action="store_true")
    with_json(add("list-teams", cmd_list_teams, "list teams with member and package counts"))
    p = add("remove-team", cmd_remove_team, "remove a team and its memberships")
    p.add_argument("slug")
    p = with_json(add("team-members", cmd_team_members,
                      "list a team's members, one per line (muted ones marked)"))
    p.add_argument("slug")
    for name, func, help in [
        ("team-add-package", cmd_team_add_package, "add a package to a team"),
        ("team-remove-package", cmd_team_remove_package, "take a package from a team"),
    ]:
        p = add(name, func, help)
        p.add_argument("slug")
        p.add_argument("package")
        if func is cmd_team_add_package:
            p.add_argument("--create", action="store_true", help="create an unknown package")
    for name, func, help in [
        ("team-add-member", cmd_team_add_member, "add EMAIL to a team"),
        ("team-remove-member", cmd_team_remove_member, "remove EMAIL from a team"),
        ("mute", _mute(True), "mute a team membership (or one package of it)"),
        ("unmute", _mute(False), "unmute a team membership (or one package of it)"),
    ]:
        p = add(name, func, help)
        p.add_argument("slug")
        p.add_argument("email")
        if name in ("mute", "unmute"):
            p.add_argument("--package", metavar="PKG")

    p = add("subscribe", cmd_subscribe, "subscribe EMAIL to PKG without confirmation")
    p.add_argument("package")
    p.add_argument("email")
    p.add_argument("--create", action="store_true", help="create an unknown package")
    p = add("unsubscribe", cmd_unsubscribe, "unsubscribe EMAIL from PKG without confirmation")
    p.add_argument("package")
    p.add_argument("email")
    p = add("unsubscribe-all", cmd_unsubscribe_all, "remove every subscription of EMAIL")
    p.add_argument("email")
    p = add("dump-subscribers", cmd_dump_subscribers,
            "print package -> subscribers as JSON")
    p.add_argument("packages", nargs="*", metavar="PKG")
    with_json(add("stats", cmd_stats, "print counts of what the store holds"))
    p = add("news", cmd_news, "list news items")
    p.add_argument("package", nargs="?")
    p.add_argument("--limit", type=int, default=50)
