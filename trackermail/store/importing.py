# -*- test-case-name: tests.test_importer_export -*-
"""
Store programs of the distro-tracker import (L{trackermail.importer}).

Every program here takes rows that are already validated, with keywords
and packages as ids, and brings the store to what the rows say in a
handful of statements per batch, whatever its size: it reads what the
store holds for the batch (C{IN} lookups of L{_IN_CHUNK} keys), compares,
and writes only the differences (multi-row upserts). So a second run of
the same rows writes nothing, and each program fires with how many rows it
created and how many it changed.

Keyword sets (an address's defaults, a subscription's, a membership's, a
membership's for one package) are compared and replaced as whole sets: a
row's own set is stored only when its C{own_*} flag is set.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from trackermail.store.sql import Later, Many, Rows
from trackermail.store.subscriptions import new_salt

# Rows per "IN (...)" lookup: far below SQLite's and PostgreSQL's limits.
_IN_CHUNK = 500


def _chunks(items: Sequence, size: int = _IN_CHUNK):
    for start in range(0, len(items), size):
        yield items[start: start + size]


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _select_in(sql: str, keys: Iterable):
    """Rows of C{sql} (with C{{marks}} where the IN list goes) for C{keys}."""
    found = []
    for chunk in _chunks(sorted(set(keys))):
        found.extend((yield Rows(sql.format(marks=_marks(len(chunk))), list(chunk))))
    return found


def _ids(table: str, column: str, keys: Sequence[str]):
    rows = yield from _select_in(f"SELECT {column}, id FROM {table} WHERE {column} IN ({{marks}})",
                                 keys)
    return {key: ident for key, ident in rows}


def _keyword_sets(table: str, parent: str, parent_ids: Iterable[int]):
    """C{{parent id: frozenset(keyword ids)}} of a keyword-set table."""
    sets: dict[int, set] = {}
    rows = yield from _select_in(
        f"SELECT {parent}, keyword_id FROM {table} WHERE {parent} IN ({{marks}})", parent_ids)
    for owner, keyword in rows:
        sets.setdefault(owner, set()).add(keyword)
    return {owner: frozenset(kws) for owner, kws in sets.items()}


def _replace_keyword_sets(table: str, parent: str, sets: Mapping[int, Iterable[int]]):
    owners = sorted(sets)
    for chunk in _chunks(owners):
        yield Later(f"DELETE FROM {table} WHERE {parent} IN ({_marks(len(chunk))})", list(chunk))
    yield Many(f"INSERT INTO {table} ({parent}, keyword_id) VALUES (?, ?)",
               [(owner, k) for owner in owners for k in sorted(sets[owner])])


def _wanted_set(own: bool, keyword_ids: Iterable[int]) -> frozenset:
    return frozenset(keyword_ids) if own else frozenset()


# ---------------------------------------------------------------------------
# Keywords and packages


def import_keywords(keywords: Sequence[tuple[str, bool, str]]):
    """
    Create the keywords C{(name, is_default, description)} that are missing
    and give existing ones the export's default flag (their description,
    help text of this tracker, is kept). Fires with C{(ids, default_names,
    created, updated)}: C{ids} maps every keyword of the store (not only
    these) to its id, C{default_names} is the store's set of keywords
    marked default afterwards.
    """
    rows = yield Rows("SELECT name, id, is_default FROM keywords")
    current = {name: bool(flag) for name, _, flag in rows}
    new = [(n, bool(d), desc) for n, d, desc in keywords if n not in current]
    changed = [(bool(d), n) for n, d, _ in keywords if n in current and current[n] != bool(d)]
    yield Many("INSERT INTO keywords (name, is_default, description) VALUES (?, ?, ?) "
               "ON CONFLICT (name) DO NOTHING", new)
    for flag, name in changed:
        yield Later("UPDATE keywords SET is_default = ? WHERE name = ?", (flag, name))
    rows = yield Rows("SELECT name, id, is_default FROM keywords")
    ids = {name: ident for name, ident, _ in rows}
    defaults = frozenset(name for name, _, flag in rows if flag)
    return ids, defaults, len(new), len(changed)


def import_packages(packages: Sequence[tuple[str, str]], binaries: Sequence[tuple[str, str]]):
    """
    Create the packages C{(name, kind)} that are missing; a package known
    only as a name (C{other}) takes the export's kind, other kinds are
    kept. Link each C{(binary, source)}. Fires with C{(ids, created,
    updated, binaries_created)}, C{ids} mapping each given name to its id.
    """
    rows = yield Rows("SELECT name, id, kind FROM packages")
    current = {name: kind for name, _, kind in rows}
    new = [(n, k) for n, k in packages if n not in current]
    promote: dict[str, list[str]] = {}
    for name, kind in packages:
        if current.get(name) == "other" and kind != "other":
            promote.setdefault(kind, []).append(name)
    yield Many("INSERT INTO packages (name, kind) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
               new)
    for kind, names in sorted(promote.items()):
        for chunk in _chunks(sorted(names)):
            yield Later(f"UPDATE packages SET kind = ? WHERE kind = 'other' AND name IN "
                       f"({_marks(len(chunk))})", [kind, *chunk])
    ids = {name: ident for name, ident, _ in (yield Rows("SELECT name, id, kind FROM packages"))}
    present = set()
    if binaries:
        present = set((yield Rows("SELECT name, source_id FROM binary_packages")))
    links = sorted({(b, ids[s]) for b, s in binaries} - present)
    yield Many("INSERT INTO binary_packages (name, source_id) VALUES (?, ?) "
               "ON CONFLICT DO NOTHING", links)
    return ({name: ids[name] for name, _ in packages}, len(new),
            sum(len(v) for v in promote.values()), len(links))


# ---------------------------------------------------------------------------
# Addresses and their subscriptions


def import_addresses(addresses: Sequence[tuple], now: float):
    """
    Bring addresses and their subscriptions to the export's state.

    Each address is C{(email, email_lower, own_defaults, default_keyword_ids,
    subscriptions)}, each subscription C{(package_id, active, own_keywords,
    keyword_ids)}. A new address keeps the export's spelling, an existing
    one its own. Subscriptions the export does not name are left alone.
    Fires with C{{"addresses": (created, updated), "subscriptions":
    (created, updated)}}.
    """
    lowers = [a[1] for a in addresses]
    rows = yield from _select_in(
        "SELECT email_lower, id, own_default_keywords FROM emails "
        "WHERE email_lower IN ({marks})", lowers)
    existing = {lower: (ident, bool(own)) for lower, ident, own in rows}
    yield Many("INSERT INTO emails (email, email_lower, own_default_keywords) VALUES (?, ?, ?) "
               "ON CONFLICT (email_lower) DO NOTHING",
               [(email, lower, bool(own)) for email, lower, own, _, _ in addresses
                if lower not in existing])
    ids = {lower: ident for lower, (ident, _) in existing.items()}
    ids.update((yield from _ids("emails", "email_lower",
                                [lower for lower in lowers if lower not in existing])))
    sets = yield from _keyword_sets("email_default_keywords", "email_id",
                                    [ident for ident, _ in existing.values()])
    flags: dict[bool, list[int]] = {}
    replace: dict[int, frozenset] = {}
    updated = 0
    for _, lower, own, keyword_ids, _ in addresses:
        eid, wanted = ids[lower], _wanted_set(own, keyword_ids)
        if lower not in existing:
            if wanted:
                replace[eid] = wanted
            continue
        old_own = existing[lower][1]
        if old_own == bool(own) and sets.get(eid, frozenset()) == wanted:
            continue
        updated += 1
        if old_own != bool(own):
            flags.setdefault(bool(own), []).append(eid)
        if sets.get(eid, frozenset()) != wanted:
            replace[eid] = wanted
    for flag, eids in sorted(flags.items()):
        for chunk in _chunks(sorted(eids)):
            yield Later(f"UPDATE emails SET own_default_keywords = ? "
                       f"WHERE id IN ({_marks(len(chunk))})", [flag, *chunk])
    yield from _replace_keyword_sets("email_default_keywords", "email_id", replace)
    subscriptions = yield from _import_subscriptions(
        [(ids[a[1]], *sub) for a in addresses for sub in a[4]], now)
    return {"addresses": (len(lowers) - len(existing), updated),
            "subscriptions": subscriptions}


def _import_subscriptions(subscriptions: Sequence[tuple], now: float):
    """C{(email_id, package_id, active, own, keyword_ids)} rows; fires with (created, updated)."""
    email_ids = {s[0] for s in subscriptions}
    rows = yield from _select_in(
        "SELECT id, email_id, package_id, active, own_keywords FROM subscriptions "
        "WHERE email_id IN ({marks})", email_ids)
    existing = {(eid, pid): (sid, bool(active), bool(own)) for sid, eid, pid, active, own in rows}
    sets = yield from _keyword_sets("subscription_keywords", "subscription_id",
                                    [v[0] for v in existing.values()])
    upserts, want_sets = [], {}
    created = updated = 0
    for eid, pid, active, own, keyword_ids in subscriptions:
        wanted = _wanted_set(own, keyword_ids)
        found = existing.get((eid, pid))
        if found is None:
            created += 1
            upserts.append((eid, pid, bool(active), bool(own), now, new_salt()))
            if wanted:
                want_sets[(eid, pid)] = wanted
            continue
        sid, old_active, old_own = found
        flags_differ = (old_active, old_own) != (bool(active), bool(own))
        set_differs = sets.get(sid, frozenset()) != wanted
        if flags_differ or set_differs:
            updated += 1
        if flags_differ:
            upserts.append((eid, pid, bool(active), bool(own), now, new_salt()))
        if set_differs:
            want_sets[(eid, pid)] = wanted
    # A subscription that starts (again) gets a new token salt, so that the
    # unsubscribe links of an earlier life of it do not work.
    yield Many("INSERT INTO subscriptions "
               "(email_id, package_id, active, own_keywords, created, token_salt) "
               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (email_id, package_id) DO UPDATE SET "
               "active = excluded.active, own_keywords = excluded.own_keywords, "
               "token_salt = CASE WHEN excluded.active AND NOT subscriptions.active "
               "THEN excluded.token_salt ELSE subscriptions.token_salt END", upserts)
    if want_sets:
        rows = yield from _select_in(
            "SELECT id, email_id, package_id FROM subscriptions WHERE email_id IN ({marks})",
            {eid for eid, _ in want_sets})
        sid_of = {(eid, pid): sid for sid, eid, pid in rows}
        yield from _replace_keyword_sets(
            "subscription_keywords", "subscription_id",
            {sid_of[key]: kws for key, kws in want_sets.items()})
    return created, updated


# ---------------------------------------------------------------------------
# Teams


def import_teams(teams: Sequence[tuple]):
    """
    Bring teams, their packages and their memberships to the export's state.

    Each team is C{(slug, name, public, owner_email_lower_or_None,
    package_ids, members)}; each member C{(email_lower, muted,
    own_keywords, keyword_ids, packages)}; each of its packages
    C{(package_id, muted, own_keywords, keyword_ids)}. Addresses must
    exist already. Packages and memberships the export does not name are
    left alone. Fires with C{{category: (created, updated)}} for C{teams},
    C{team_packages}, C{memberships} and C{membership_packages}.
    """
    lowers = {t[3] for t in teams if t[3]} | {m[0] for t in teams for m in t[5]}
    email_ids = yield from _ids("emails", "email_lower", sorted(lowers))
    slugs = [t[0] for t in teams]
    rows = yield from _select_in(
        "SELECT slug, id, name, public, owner_id FROM teams WHERE slug IN ({marks})", slugs)
    existing = {slug: (name, bool(public), owner) for slug, _, name, public, owner in rows}
    upserts = []
    for slug, name, public, owner, _, _ in teams:
        wanted = (name, bool(public), email_ids.get(owner) if owner else None)
        if existing.get(slug) != wanted:
            upserts.append((slug, *wanted))
    yield Many("INSERT INTO teams (slug, name, public, owner_id) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (slug) DO UPDATE SET name = excluded.name, "
               "public = excluded.public, owner_id = excluded.owner_id", upserts)
    team_ids = yield from _ids("teams", "slug", slugs)
    created = sum(1 for slug in slugs if slug not in existing)
    tally = {"teams": (created, len(upserts) - created)}

    present = set((yield from _select_in(
        "SELECT team_id, package_id FROM team_packages WHERE team_id IN ({marks})",
        team_ids.values())))
    links = sorted({(team_ids[t[0]], pid) for t in teams for pid in t[4]} - present)
    yield Many("INSERT INTO team_packages (team_id, package_id) VALUES (?, ?) "
               "ON CONFLICT DO NOTHING", links)
    tally["team_packages"] = (len(links), 0)

    members = [(team_ids[t[0]], email_ids[m[0]], *m[1:]) for t in teams for m in t[5]]
    tally.update((yield from _import_memberships(members, team_ids.values())))
    return tally


def _import_memberships(members: Sequence[tuple], team_ids: Iterable[int]):
    """C{(team_id, email_id, muted, own, keyword_ids, packages)} rows."""
    sql = ("SELECT id, team_id, email_id, muted, own_keywords FROM memberships "
           "WHERE team_id IN ({marks})")
    rows = yield from _select_in(sql, team_ids)
    existing = {(tid, eid): (mid, bool(muted), bool(own)) for mid, tid, eid, muted, own in rows}
    sets = yield from _keyword_sets("membership_keywords", "membership_id",
                                    [v[0] for v in existing.values()])
    upserts, want_sets = [], {}
    created = updated = 0
    for tid, eid, muted, own, keyword_ids, _ in members:
        wanted = _wanted_set(own, keyword_ids)
        found = existing.get((tid, eid))
        if found is None:
            created += 1
            upserts.append((tid, eid, bool(muted), bool(own)))
            if wanted:
                want_sets[(tid, eid)] = wanted
            continue
        mid, old_muted, old_own = found
        flags_differ = (old_muted, old_own) != (bool(muted), bool(own))
        set_differs = sets.get(mid, frozenset()) != wanted
        if flags_differ or set_differs:
            updated += 1
        if flags_differ:
            upserts.append((tid, eid, bool(muted), bool(own)))
        if set_differs:
            want_sets[(tid, eid)] = wanted
    yield Many("INSERT INTO memberships (team_id, email_id, muted, own_keywords) "
               "VALUES (?, ?, ?, ?) ON CONFLICT (team_id, email_id) DO UPDATE SET "
               "muted = excluded.muted, own_keywords = excluded.own_keywords", upserts)
    if upserts:
        rows = yield from _select_in(sql, {tid for tid, _, _, _ in upserts})
        existing.update({(tid, eid): (mid, bool(muted), bool(own))
                         for mid, tid, eid, muted, own in rows})
    yield from _replace_keyword_sets("membership_keywords", "membership_id",
                                     {existing[key][0]: kws for key, kws in want_sets.items()})
    specifics = [(existing[(tid, eid)][0], *package)
                 for tid, eid, _, _, _, packages in members for package in packages]
    return {"memberships": (created, updated),
            "membership_packages": (yield from _import_membership_packages(specifics))}


def _import_membership_packages(specifics: Sequence[tuple]):
    """C{(membership_id, package_id, muted, own, keyword_ids)} rows."""
    if not specifics:
        return 0, 0
    membership_ids = {s[0] for s in specifics}
    rows = yield from _select_in(
        "SELECT membership_id, package_id, muted, own_keywords FROM membership_packages "
        "WHERE membership_id IN ({marks})", membership_ids)
    existing = {(mid, pid): (bool(muted), bool(own)) for mid, pid, muted, own in rows}
    sets: dict[tuple, set] = {}
    for mid, pid, kid in (yield from _select_in(
            "SELECT membership_id, package_id, keyword_id FROM membership_package_keywords "
            "WHERE membership_id IN ({marks})", membership_ids)):
        sets.setdefault((mid, pid), set()).add(kid)
    upserts, replace = [], {}
    created = updated = 0
    for mid, pid, muted, own, keyword_ids in specifics:
        key, wanted = (mid, pid), _wanted_set(own, keyword_ids)
        found = existing.get(key)
        set_differs = frozenset(sets.get(key, ())) != wanted
        if found is None:
            created += 1
        elif found != (bool(muted), bool(own)) or set_differs:
            updated += 1
        if found != (bool(muted), bool(own)):
            upserts.append((mid, pid, bool(muted), bool(own)))
        if set_differs:
            replace[key] = wanted
    yield Many("INSERT INTO membership_packages (membership_id, package_id, muted, own_keywords) "
               "VALUES (?, ?, ?, ?) ON CONFLICT (membership_id, package_id) DO UPDATE SET "
               "muted = excluded.muted, own_keywords = excluded.own_keywords", upserts)
    for mid, pid in sorted(replace):
        yield Later("DELETE FROM membership_package_keywords "
                   "WHERE membership_id = ? AND package_id = ?", (mid, pid))
    yield Many("INSERT INTO membership_package_keywords (membership_id, package_id, keyword_id) "
               "VALUES (?, ?, ?)",
               [(mid, pid, k) for (mid, pid), kws in sorted(replace.items()) for k in sorted(kws)])
    return created, updated


# ---------------------------------------------------------------------------
# Bounce statistics


def import_bounce_stats(rows: Sequence[tuple[str, str, int, int]]):
    """
    Set the C{(email_lower, day, sent, bounced)} counts (soft bounces, which
    distro-tracker does not count, are kept). Addresses must exist. Fires
    with C{(created, updated)}.
    """
    email_ids = yield from _ids("emails", "email_lower", sorted({r[0] for r in rows}))
    found = yield from _select_in(
        "SELECT email_id, day, sent, bounced FROM bounce_stats WHERE email_id IN ({marks})",
        email_ids.values())
    existing = {(eid, day): (sent, bounced) for eid, day, sent, bounced in found}
    upserts = [(email_ids[lower], day, sent, bounced) for lower, day, sent, bounced in rows
               if existing.get((email_ids[lower], day)) != (sent, bounced)]
    yield Many("INSERT INTO bounce_stats (email_id, day, sent, bounced) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (email_id, day) DO UPDATE SET sent = excluded.sent, "
               "bounced = excluded.bounced", upserts)
    created = sum(1 for eid, day, _, _ in upserts if (eid, day) not in existing)
    return created, len(upserts) - created


# ---------------------------------------------------------------------------
# Subscriber lists (tracker_dump_subscribers)


def import_batch(batch: Mapping[str, Mapping[str, str]], now: float):
    """
    Store program: subscribe every C{email_lower -> email} of each package
    of C{batch} (already validated), as active subscriptions. Fires with
    C{(created, already_present)}. A handful of statements per batch.
    """
    packages = sorted(batch)
    emails: dict[str, str] = {}
    for per_package in batch.values():
        for lower, address in per_package.items():
            emails.setdefault(lower, address)
    lowers = sorted(emails)
    yield Many(
        "INSERT INTO packages (name, kind) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        [(name, "other") for name in packages],
    )
    yield Many(
        "INSERT INTO emails (email, email_lower) VALUES (?, ?) "
        "ON CONFLICT (email_lower) DO NOTHING",
        [(emails[lower], lower) for lower in lowers],
    )
    package_ids = yield from _ids("packages", "name", packages)
    email_ids = yield from _ids("emails", "email_lower", lowers)
    existing: dict[tuple[int, int], tuple[int, bool]] = {}
    rows = yield from _select_in(
        "SELECT email_id, package_id, id, active FROM subscriptions "
        "WHERE package_id IN ({marks})", package_ids.values())
    for eid, pid, sid, active in rows:
        existing[(eid, pid)] = (sid, bool(active))
    new_rows = []
    reactivate = []
    already = 0
    for package in packages:
        pid = package_ids[package]
        for lower in sorted(batch[package]):
            eid = email_ids[lower]
            found = existing.get((eid, pid))
            if found is None:
                new_rows.append((eid, pid, True, now, new_salt()))
            elif found[1]:
                already += 1
            else:
                reactivate.append(found[0])
    yield Many(
        "INSERT INTO subscriptions (email_id, package_id, active, created, token_salt) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (email_id, package_id) DO NOTHING",
        new_rows,
    )
    for sid in sorted(reactivate):
        yield Later("UPDATE subscriptions SET active = ?, token_salt = ? WHERE id = ?",
                   (True, new_salt(), sid))
    return len(new_rows) + len(reactivate), already
