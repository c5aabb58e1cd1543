#!/usr/bin/env python3
"""
Control bot benchmark: subscribe + confirm round trips per second.

Starts a real tracker process (as bench/e2e.py does) per backend, then:
  1. sends K `subscribe pkgN` mails from K different users over LMTP (on
     --connections connections at once, default 10, as an MTA does) and
     waits until the K confirmation keys are in the store (and the K replies
     plus K CONFIRM mails have been handed to the sink);
  2. sends K `confirm KEY` mails and waits until the K subscriptions are
     active.
Reports control mails processed per second for each phase and overall, and
the CPU milliseconds per mail of the tracker and of PostgreSQL's backends.

    .venv/bin/python bench/control.py [--mails 500] [--backends sqlite,postgresql]

Prints a table and writes bench/results/control.json.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import FQDN, BackendCPU, tracker_run  # noqa: E402


def send_all(port: int, mails: list[tuple[str, bytes]], connections: int = 1) -> None:
    """
    Send the mails over C{connections} LMTP connections at once, the way an
    MTA in front delivers (Postfix opens up to 20 to one LMTP destination).
    """
    def send(part: list[tuple[str, bytes]]) -> None:
        client = smtplib.LMTP("127.0.0.1", port)
        try:
            for sender, data in part:
                client.sendmail(sender, [f"control@{FQDN}"], data)
        finally:
            client.quit()

    parts = [mails[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=send, args=(part,)) for part in parts if part]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def wait_for(db, conn, sql: str, count: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (db.scalar(conn, sql) or 0) >= count:
            return True
        time.sleep(0.02)
    return False


def run(backend: str, k: int, sink_kind: str, timeout: float, connections: int) -> dict:
    with tracker_run(backend, 0, sink_kind, 4, "control") as (db, _sink, tracker):
        conn = db.connect()
        users = [f"user{i}@example.net" for i in range(k)]
        requests = [
            (u, (f"From: {u}\r\nTo: control@{FQDN}\r\nSubject: subscribe pkg{i}\r\n"
                 f"Message-ID: <sub{i}@example.net>\r\n\r\nthanks\r\n").encode())
            for i, u in enumerate(users)
        ]
        db_cpu = BackendCPU(db, conn)
        db_cpu.start()
        cpu0 = tracker.cpu_seconds()
        t0 = time.time()
        send_all(tracker.lmtp_port, requests, connections)
        ok1 = wait_for(db, conn, "SELECT COUNT(*) FROM confirmations", k, timeout)
        t1 = time.time()
        keys = dict(db.rows(conn, "SELECT email_lower, confirm_key FROM confirmations"))
        confirms = [
            (u, (f"From: {u}\r\nTo: control@{FQDN}\r\nSubject: confirm\r\n"
                 f"Message-ID: <conf{i}@example.net>\r\n\r\nconfirm {keys.get(u, 'x')}\r\n"
                 ).encode())
            for i, u in enumerate(users)
        ]
        send_all(tracker.lmtp_port, confirms, connections)
        ok2 = wait_for(db, conn, "SELECT COUNT(*) FROM subscriptions WHERE active", k, timeout)
        t2 = time.time()
        cpu = tracker.cpu_seconds() - cpu0
        database_cpu = db_cpu.stop()
        conn.close()
        return {
            "backend": backend, "mails": 2 * k, "connections": connections,
            "complete": ok1 and ok2,
            "subscribe_per_s": round(k / (t1 - t0), 1),
            "confirm_per_s": round(k / (t2 - t1), 1),
            "overall_per_s": round(2 * k / (t2 - t0), 1),
            # CPU milliseconds per control mail: the tracker process, and
            # PostgreSQL's backends serving it (None on SQLite, in-process).
            "tracker_cpu_ms": round(cpu / (2 * k) * 1000, 2),
            "db_cpu_ms": (round(database_cpu / (2 * k) * 1000, 2)
                          if backend == "postgresql" else None),
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="control@ round trips per second")
    parser.add_argument("--mails", type=int, default=500, help="subscribe requests (K)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--sink", default="auto", choices=["auto", "postfix", "twisted"])
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--connections", type=int, default=10,
                        help="LMTP connections sending at once (1: one mail after the other)")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "control.json"))
    args = parser.parse_args(argv)
    results = [run(b, args.mails, args.sink, args.timeout, args.connections)
               for b in args.backends.split(",")]
    print(f"{'backend':<12}{'mails':>7}{'subscribe/s':>13}{'confirm/s':>11}{'overall/s':>11}"
          f"{'cpu ms':>8}{'db ms':>7}")
    for r in results:
        flag = "" if r["complete"] else "  INCOMPLETE"
        print(f"{r['backend']:<12}{r['mails']:>7}{r['subscribe_per_s']:>13}"
              f"{r['confirm_per_s']:>11}{r['overall_per_s']:>11}"
              f"{r['tracker_cpu_ms']:>8}{str(r['db_cpu_ms'] or '-'):>7}{flag}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
