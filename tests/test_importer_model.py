"""
The import against distro-tracker's rules written out literally, on many
random exports: spellings of an address that differ only in case, muted
and keyword-less memberships, per-package settings, inactive
subscriptions, empty keyword sets.

L{distro_tracker_recipients} follows distro-tracker's data model to the
letter (one address per UserEmail, as its dispatch code reads them); after
the import, trackermail's fan-out must reach the same addresses (as a set)
for every (package, keyword) pair.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from tests.support.stores import make_memory_store
from tests.test_importer_export import (
    address,
    keyword,
    member,
    package,
    settings,
    specifics,
    subscription,
    team,
)
from trackermail.distro_tracker import read_export
from trackermail.importer import import_export
from trackermail.store.subscriptions import recipients_for

KEYWORDS, PACKAGES, PEOPLE, TEAMS = 5, 8, 8, 3


def random_export(rnd: random.Random) -> list:
    def some_keywords():
        return rnd.sample(range(1, KEYWORDS + 1), rnd.randint(0, KEYWORDS))

    rows = [keyword(i, f"kw{i}", default=rnd.random() < 0.5) for i in range(1, KEYWORDS + 1)]
    rows += [package(i, f"pkg{i}", source=True) for i in range(1, PACKAGES + 1)]
    emails = []
    for person in range(PEOPLE):
        base = f"user{person}@example.org"
        for variant in range(rnd.choice([1, 1, 2, 3])):
            spelling = base if variant == 0 else "".join(
                c.upper() if rnd.random() < 0.3 else c for c in base)
            emails.append((len(emails) + 1, spelling if variant == 0 or spelling != base
                           else base.upper()))
    rows += [address(pk, email) for pk, email in emails]
    with_settings = [pk for pk, _ in emails if rnd.random() < 0.8]
    rows += [settings(pk, pk, some_keywords()) for pk in with_settings]
    count = 0
    for pk in with_settings:
        for p in rnd.sample(range(1, PACKAGES + 1), rnd.randint(0, 4)):
            count += 1
            rows.append(subscription(count, pk, p, active=rnd.random() < 0.85,
                                     keywords=None if rnd.random() < 0.5 else some_keywords()))
    memberships = count = 0
    for t in range(1, TEAMS + 1):
        packages = rnd.sample(range(1, PACKAGES + 1), rnd.randint(1, 5))
        rows.append(team(t, f"team{t}", packages))
        for pk, _ in rnd.sample(emails, rnd.randint(0, len(emails))):
            memberships += 1
            rows.append(member(memberships, pk, t, muted=rnd.random() < 0.2,
                               keywords=None if rnd.random() < 0.6 else some_keywords()))
            for p in rnd.sample(packages, rnd.randint(0, min(2, len(packages)))):
                count += 1
                rows.append(specifics(count, memberships, p, muted=rnd.random() < 0.3,
                                      keywords=None if rnd.random() < 0.5 else some_keywords()))
    return rows


def distro_tracker_recipients(rows: list) -> dict[tuple[str, str], set[str]]:
    """(package, keyword) -> lower-cased addresses, by distro-tracker's rules."""
    by: dict[str, list] = {}
    for row in rows:
        by.setdefault(row["model"], []).append(row)
    names = {r["pk"]: r["fields"]["name"] for r in by["core.keyword"]}
    flagged = {r["fields"]["name"] for r in by["core.keyword"] if r["fields"]["default"]}
    packages = {r["pk"]: r["fields"]["name"] for r in by["core.packagename"]}
    emails = {r["pk"]: r["fields"]["email"] for r in by["django_email_accounts.useremail"]}
    settings_of = {r["pk"]: r["fields"] for r in by.get("core.emailsettings", [])}
    defaults = {f["user_email"]: {names[k] for k in f["default_keywords"]}
                for f in settings_of.values()}
    found: dict[tuple[str, str], set[str]] = {}

    def reach(package, keywords, email_pk):
        for k in keywords:
            found.setdefault((packages[package], k), set()).add(emails[email_pk].lower())

    for row in by.get("core.subscription", []):
        f = row["fields"]
        if f["active"]:
            owner = settings_of[f["email_settings"]]["user_email"]
            reach(f["package"], defaults.get(owner, flagged) if f["_use_user_default_keywords"]
                  else {names[k] for k in f["_keywords"]}, owner)
    teams = {r["pk"]: r["fields"] for r in by["core.team"]}
    per_package = {}
    for row in by.get("core.membershippackagespecifics", []):
        per_package[(row["fields"]["membership"], row["fields"]["package_name"])] = row["fields"]
    for row in by.get("core.teammembership", []):
        f = row["fields"]
        if f["muted"]:
            continue
        for p in teams[f["team"]]["packages"]:
            specific = per_package.get((row["pk"], p))
            if specific and specific["muted"]:
                continue
            if specific and specific["_has_keywords"]:
                keywords = {names[k] for k in specific["keywords"]}
            elif f["has_membership_keywords"]:
                keywords = {names[k] for k in f["default_keywords"]}
            else:
                keywords = defaults.get(f["user_email"], flagged)
            reach(p, keywords, f["user_email"])
    return found


class RandomExportTests(SynchronousTestCase):
    def test_fan_out_matches_distro_tracker_rules(self):
        """For 200 random exports every pair reaches the addresses distro-tracker's rules give."""
        wrong = []
        for seed in range(200):
            rows = random_export(random.Random(seed))
            store = make_memory_store(self)
            self.successResultOf(import_export(store, read_export(rows), now=1.0))
            expected = distro_tracker_recipients(rows)
            for p in range(1, PACKAGES + 1):
                for k in range(1, KEYWORDS + 1):
                    direct, team_copies = self.successResultOf(
                        store.run(recipients_for, f"pkg{p}", f"kw{k}"))
                    got = {e.lower() for e in direct} | {e.lower() for e, _ in team_copies}
                    want = expected.get((f"pkg{p}", f"kw{k}"), set())
                    if got != want:
                        wrong.append(f"seed {seed} pkg{p}_kw{k}: missing {sorted(want - got)}, "
                                     f"extra {sorted(got - want)}")
            again = self.successResultOf(import_export(store, read_export(rows), now=2.0))
            self.assertFalse(again.changed, f"seed {seed}: a rerun changed something")
        self.assertEqual(wrong, [])
