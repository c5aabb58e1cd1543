# -*- test-case-name: tests.test_cli_bounces -*-
"""
C{trackermail bounces}: what bounced lately, per destination domain and
reason, and which addresses are how close to being unsubscribed.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time

from trackermail.bounces.policy import standing, thresholds
from trackermail.cli_support import CommandError, run_with_store
from trackermail.store.bounce_domains import domain_report
from trackermail.store.bounce_stats import bouncing_addresses

_GROUP_NOTES = {"ours": "ours (refusing us)"}


def _day(now: float) -> dt.date:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).date()


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


async def bounce_report(store, config, now: float, days: int = 7,
                        domain: str | None = None) -> dict:
    """
    The report as data: bounces per domain and reason over the last
    C{days} days (today included), and the addresses whose latest mail
    days all bounced, closest to removal first.
    """
    since = (_day(now) - dt.timedelta(days=days - 1)).isoformat()
    hard_days, soft_days = thresholds(config)
    rows = await store.run(domain_report, since, domain)
    addresses = await store.run(bouncing_addresses, since, max(hard_days, soft_days), domain)
    people = []
    for email, mail_days in addresses:
        hard, bounced = standing(mail_days)
        if bounced:
            people.append({"email": email, "hard_days": hard, "hard_threshold": hard_days,
                           "bounce_days": bounced, "bounce_threshold": soft_days})
    people.sort(key=lambda p: (-max(p["hard_days"] / hard_days,
                                    p["bounce_days"] / soft_days), p["email"]))
    return {
        "since": since,
        "days": days,
        "domain": domain,
        "domains": [{
            "domain": r.domain, "reason": r.reason, "group": r.group, "hard": r.hard,
            "soft": r.soft, "first_seen": _when(r.first_seen), "last_seen": _when(r.last_seen),
            "diagnostic": r.diagnostic,
        } for r in rows],
        "addresses": people,
    }


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_report(report: dict) -> str:
    """The report for people: two tables."""
    scope = f" to {report['domain']}" if report["domain"] else ""
    out = [f"Bounces{scope} since {report['since']} ({report['days']} days),"
           " by destination domain and reason:", ""]
    if report["domains"]:
        rows = [["domain", "reason", "group", "hard", "soft", "first seen (UTC)",
                 "last seen (UTC)"]]
        for r in report["domains"]:
            rows.append([r["domain"], r["reason"], _GROUP_NOTES.get(r["group"], r["group"]),
                         str(r["hard"]), str(r["soft"]), r["first_seen"], r["last_seen"]])
        out += _table(rows, {3, 4})
    else:
        out.append("  none")
    out += ["", "Addresses whose latest mail days all bounced (removed at the threshold):", ""]
    if report["addresses"]:
        rows = [["address", "hard bounces", "any bounces"]]
        for p in report["addresses"]:
            rows.append([p["email"], f"{p['hard_days']}/{p['hard_threshold']} days",
                         f"{p['bounce_days']}/{p['bounce_threshold']} days"])
        out += _table(rows, {1, 2})
    else:
        out.append("  none")
    return "\n".join(out) + "\n"


def cmd_bounces(args, config):
    if args.days < 1:
        raise CommandError("--days must be at least 1")

    async def body(store):
        report = await bounce_report(store, config, time.time(), args.days,
                                     args.domain.lower() if args.domain else None)
        if args.json:
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(format_report(report))

    return run_with_store(config, body)


def register(add) -> None:
    """Add this module's subcommands through C{add(name, func, help)}."""
    p = add("bounces", cmd_bounces,
            "show recent bounces by domain and reason, and addresses close to removal")
    p.add_argument("--days", type=int, default=7, metavar="N",
                   help="the last N days, today included (default 7)")
    p.add_argument("--domain", metavar="D", help="only this destination domain")
    p.add_argument("--json", action="store_true", help="JSON instead of tables")
