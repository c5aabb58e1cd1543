#!/usr/bin/env python3
"""
Big-mail benchmark: peak memory of a real tracker while several clients
send it big messages at once.

For each backend it starts `twistd -n tracker` (as bench/e2e.py does) with
a package of N subscribers and Postfix's smtp-sink as the smarthost, then
C clients each send one message of S MiB at the same moment over LMTP, and
it waits until every copy has left the outbox. It reports the tracker's
RSS when idle (the baseline, measured in the same run), its peak RSS
(VmHWM), the growth between them, and the time from the first byte sent
to the last copy out. Goal of the delivery-guarantee issue: a peak of at
most 300 MiB for 8 clients x 20 MiB.

    .venv/bin/python bench/bigmail.py [--clients 8] [--size-mib 20]
        [--subscribers 3] [--backends sqlite,postgresql]

Prints a table and writes bench/results/bigmail.json.
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

from e2e import FQDN, tracker_run  # noqa: E402


def big_message(i: int, size: int) -> bytes:
    head = (f"From: Reporter <rep{i}@example.net>\r\nSubject: big {i}\r\n"
            f"Message-ID: <big-{i}@bench.example.net>\r\n"
            f"X-Distro-Tracker-Package: pkg\r\n\r\n").encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ=+/0123456789\r\n"
    return head + line * (size // len(line))


def rss_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def send(port: int, data: bytes, errors: list) -> None:
    try:
        client = smtplib.LMTP("127.0.0.1", port)
        try:
            client.sendmail("sender@example.net", [f"dispatch+pkg_bts@{FQDN}"], data)
        finally:
            client.quit()
    except Exception as e:  # reported, not fatal for the others
        errors.append(repr(e))


def outbox_done(db, conn, messages: int) -> bool:
    processed = db.scalar(conn, "SELECT COUNT(*) FROM processed_messages") or 0
    pending = db.scalar(conn, "SELECT COUNT(*) FROM outbox_deliveries "
                              "WHERE state IN ('queued', 'sending')") or 0
    return processed >= messages and pending == 0


def run(backend: str, clients: int, size: int, subscribers: int, timeout: float) -> dict:
    with tracker_run(backend, subscribers, "auto", 8, "bigmail") as (db, _sink, tracker):
        time.sleep(1.0)
        idle = rss_mib(tracker.pid, "VmRSS")
        mails = [big_message(i, size) for i in range(clients)]
        errors: list = []
        threads = [threading.Thread(target=send, args=(tracker.lmtp_port, m, errors))
                   for m in mails]
        conn = db.connect()
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = time.time()
        deadline = time.time() + timeout
        done = False
        while time.time() < deadline:
            if outbox_done(db, conn, clients):
                done = True
                break
            time.sleep(0.2)
        finished = time.time()
        conn.close()
        peak = rss_mib(tracker.pid, "VmHWM")
        return {
            "backend": backend, "clients": clients, "size_mib": size >> 20,
            "subscribers": subscribers, "complete": done and not errors, "errors": errors,
            "idle_rss_mib": round(idle, 1), "peak_rss_mib": round(peak, 1),
            "growth_mib": round(peak - idle, 1),
            "accept_s": round(accepted - started, 2), "total_s": round(finished - started, 2),
            "goal_peak_mib": 300,
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=20)
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "bigmail.json"))
    args = parser.parse_args(argv)
    results = []
    for backend in args.backends.split(","):
        r = run(backend, args.clients, args.size_mib << 20, args.subscribers, args.timeout)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
    print(f"{'backend':<11}{'clients x MiB':>14}{'idle MiB':>10}{'peak MiB':>10}"
          f"{'growth':>8}{'accept s':>10}{'total s':>9}  goal: peak <= 300 MiB")
    for r in results:
        flag = "" if r["complete"] else " INCOMPLETE"
        print(f"{r['backend']:<11}{r['clients']:>8} x {r['size_mib']:<3}{r['idle_rss_mib']:>10}"
              f"{r['peak_rss_mib']:>10}{r['growth_mib']:>8}{r['accept_s']:>10}"
              f"{r['total_s']:>9}{flag}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"results": results}, f, indent=2)
    return 0 if all(r["complete"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
