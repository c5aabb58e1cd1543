#!/usr/bin/env python3
"""
End-to-end benchmark: the full path through a real tracker process.

For each backend (SQLite, PostgreSQL) and each scenario, it:
  1. creates a fresh database and N subscribers of one package,
  2. starts Postfix's smtp-sink (or a Twisted sink when Postfix is missing)
     as the smarthost and `twistd -n tracker` as a child process,
  3. sends M messages to dispatch+pkg_bts@ over LMTP (one connection),
  4. waits until the outbox messages count all M x N copies as sent.

It reports deliveries/s (from the first 250 to the last recorded copy), the
tracker's CPU seconds per 1,000 deliveries, on PostgreSQL the CPU seconds
its backends spent (their PIDs from pg_stat_activity, their CPU from /proc,
in the same run), p50/p99 of the time from a
message's 250 to its last copy, and the tracker's peak RSS. In the same run it
measures the baseline the targets are stated against: Python's smtplib on one
persistent connection sending the same number of copies (capped) to the
same sink, the way distro-tracker sends.

    .venv/bin/python bench/e2e.py [--backends sqlite,postgresql]
        [--scenarios 100x1000,10x10000,1x10000@1M] [--growth]

Prints a table and writes bench/results/e2e.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from _common import free_port, scratch_pg_database  # noqa: E402
from fanout import Sink, wait_for_port  # noqa: E402

FQDN = "bench.example.org"
PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(PYTHON), "twistd")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def message(i: int, size: int) -> bytes:
    head = (
        f"From: Reporter <rep{i}@example.net>\r\n"
        f"To: {i}@bugs.example.net\r\n"
        f"Subject: Bug#{i}: pkg: something is wrong\r\n"
        f"Message-ID: <e2e-{i}@bench.example.net>\r\n"
        f"X-Distro-Tracker-Package: pkg\r\n"
        "\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eius.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


# -- databases ----------------------------------------------------------------


class Database:
    def __init__(self, backend: str, tmp: str):
        self.backend = backend
        if backend == "sqlite":
            self.url = f"sqlite:///{tmp}/tracker.sqlite"
            self._drop = None
        else:
            self.url, self._drop = scratch_pg_database("trackermail_e2e")

    def connect(self):
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.url[len("sqlite:///"):], timeout=30)
            conn.execute("PRAGMA busy_timeout = 30000")
            return conn
        import psycopg2

        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        return conn

    def scalar(self, conn, sql: str):
        cur = conn.cursor()
        cur.execute(sql)
        row = cur.fetchone()
        return row[0] if row else None

    def rows(self, conn, sql: str):
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()

    def close(self):
        if self._drop:
            self._drop()

    def backend_pids(self, conn) -> list[int]:
        """PostgreSQL backends serving this database, the benchmark's own excepted."""
        if self.backend != "postgresql":
            return []
        return [pid for (pid,) in self.rows(
            conn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid()")]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class BackendCPU:
    """
    CPU seconds used by the database server's backends of one database
    between start() and stop(): read from /proc for every PID that
    pg_stat_activity lists (a backend that appears later starts at 0).
    """

    def __init__(self, db: "Database", conn):
        self.db, self.conn = db, conn
        self.start_cpu: dict[int, float] = {}

    def start(self) -> None:
        self.start_cpu = {pid: process_cpu(pid) for pid in self.db.backend_pids(self.conn)}

    def stop(self) -> float:
        pids = set(self.start_cpu) | set(self.db.backend_pids(self.conn))
        return sum(max(0.0, process_cpu(pid) - self.start_cpu.get(pid, 0.0)) for pid in pids)


SEED = r"""
import sys
from twisted.internet import task
from twisted.internet.defer import Deferred
from trackermail.store import open_store
from trackermail.store.sql import Exec, Many, Rows, Value

url, n = sys.argv[1], int(sys.argv[2])

def seed():
    yield Exec("INSERT INTO packages (name, kind) VALUES ('pkg', 'source')")
    pid = yield Value("SELECT id FROM packages WHERE name = 'pkg'")
    emails = [(f"user{i}@sub{i % 97}.example.com", f"user{i}@sub{i % 97}.example.com")
              for i in range(n)]
    yield Many("INSERT INTO emails (email, email_lower) VALUES (?, ?)", emails)
    ids = yield Rows("SELECT id FROM emails")
    yield Many("INSERT INTO subscriptions (email_id, package_id, active) VALUES (?, ?, TRUE)",
               [(i, pid) for (i,) in ids])

async def main(reactor):
    store = open_store(url)
    await store.start()
    await store.migrate()
    await store.run(seed)
    await store.close()

task.react(lambda r: Deferred.fromCoroutine(main(r)))
"""


# -- the tracker process --------------------------------------------------------


class Tracker:
    def __init__(self, tmp: str, db_url: str, sink_port: int, connections: int):
        self.lmtp_port = free_port()
        self.config = os.path.join(tmp, "tracker.toml")
        with open(self.config, "w") as f:
            f.write(
                f'[tracker]\nfqdn = "{FQDN}"\nsecret_key = "{secrets.token_hex(16)}"\n'
                f'[spool]\npath = "{tmp}/spool"\n'
                f"concurrency = {os.environ.get('BENCH_CONCURRENCY', 8)}\n"
                f'[database]\nurl = "{db_url}"\n'
                f"pool_size = {os.environ.get('BENCH_POOL', 4)}\n"
                f'[smtp]\nlisten = []\n'
                f'[lmtp]\nlisten = ["tcp:{self.lmtp_port}:interface=127.0.0.1"]\n'
                f'[outbound]\nsmarthost = "127.0.0.1:{sink_port}"\n'
                f"connections = {connections}\n"
                f"batch_size = {os.environ.get('BENCH_BATCH', 2000)}\n"
                f"[limits]\nmax_message_size = {64 * 1024 * 1024}\n"
            )
        self.log = open(os.path.join(tmp, "twistd.log"), "wb")
        command = [TWISTD, "-n", "--pidfile=", "tracker", "--config", self.config]
        self.profile = os.environ.get("BENCH_PROFILE")
        if self.profile:
            # py-spy (pip install py-spy) samples the tracker into an SVG.
            fmt = "raw" if self.profile.endswith(".txt") else "flamegraph"
            command = ["py-spy", "record", "-r", "200", "-f", fmt, "-o", self.profile,
                       "--"] + command
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=tmp)
        wait_for_port(self.lmtp_port, timeout=30)

    @property
    def pid(self) -> int:
        if not self.profile:
            return self.proc.pid
        children = open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split()
        return int(children[0]) if children else self.proc.pid

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.profile:
            os.kill(self.pid, signal.SIGTERM)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def lmtp_send_all(port: int, messages: list[bytes], rcpt: str) -> list[float]:
    """Send every message on one LMTP connection; the time of each 250."""
    times = []
    client = smtplib.LMTP("127.0.0.1", port)
    try:
        for data in messages:
            client.sendmail("sender@example.net", [rcpt], data)
            times.append(time.time())
    finally:
        client.quit()
    return times


# -- scenarios --------------------------------------------------------------------


def parse_scenario(text: str) -> tuple[int, int, int]:
    size = 4096
    if "@" in text:
        text, size_text = text.split("@")
        size = int(size_text.rstrip("MK")) * (1024 * 1024 if size_text.endswith("M") else 1024)
    m, n = text.split("x")
    return int(m), int(n), size


@contextlib.contextmanager
def tracker_run(backend: str, subscribers: int, sink_kind: str, connections: int,
                name: str):
    """
    A fresh database with C{subscribers} of one package, a sink and a
    tracker process sending to it: yields C{(db, sink, tracker)}, and removes
    them all afterwards.
    """
    tmp = tempfile.mkdtemp(prefix=f"trackermail-{name}-")
    db = Database(backend, tmp)
    sink = Sink(sink_kind)
    tracker = None
    try:
        subprocess.run([PYTHON, "-c", SEED, db.url, str(subscribers)], check=True, cwd=ROOT)
        tracker = Tracker(tmp, db.url, sink.port, connections)
        yield db, sink, tracker
    finally:
        if tracker is not None:
            tracker.stop()
        sink.stop()
        db.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_scenario(backend: str, messages: int, subscribers: int, size: int,
                 sink_kind: str, connections: int, timeout: float) -> dict:
    with tracker_run(backend, subscribers, sink_kind, connections, "e2e") as (db, sink, tracker):
        mails = [message(i, size) for i in range(messages)]
        conn = db.connect()
        db_cpu = BackendCPU(db, conn)
        db_cpu.start()
        cpu0 = tracker.cpu_seconds()
        started = time.time()
        acks = lmtp_send_all(tracker.lmtp_port, mails, f"dispatch+pkg_bts@{FQDN}")
        total = messages * subscribers
        deadline = time.time() + timeout
        sent = 0
        while time.time() < deadline:
            # A sent copy's delivery is deleted and counted on its message:
            # a sum over M rows, cheap enough to poll often.
            sent = db.scalar(conn, "SELECT COALESCE(SUM(sent), 0) FROM outbox_messages") or 0
            if sent >= total:
                break
            time.sleep(0.05)
        finished = time.time()
        cpu = tracker.cpu_seconds() - cpu0
        database_cpu = db_cpu.stop()
        rss = tracker.peak_rss_mib()
        last = db.rows(conn, "SELECT id, last_sent FROM outbox_messages ORDER BY id")
        bodies = 1 if db.scalar(conn, "SELECT COUNT(*) FROM outbox_messages") == messages else 0
        conn.close()
        # Messages are processed concurrently: pair the i-th 250 with the
        # i-th message to finish, a fair estimate of 250 -> last copy.
        ends = sorted(t for _, t in last if t is not None)
        latencies = sorted(max(0.0, end - ack) for end, ack in zip(ends, sorted(acks)))
        elapsed = (max(ends) if ends else finished) - started
        return {
            "backend": backend, "messages": messages, "subscribers": subscribers,
            "size": size, "deliveries": sent, "complete": sent >= total,
            "seconds": round(elapsed, 2),
            "deliveries_per_s": round(sent / elapsed, 1) if elapsed else 0,
            "cpu_s_per_1000": round(cpu / max(1, sent) * 1000, 3),
            "db_cpu_s_per_1000": (round(database_cpu / max(1, sent) * 1000, 3)
                                  if backend == "postgresql" else None),
            "p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "p99_s": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)
            if latencies else None,
            "peak_rss_mib": round(rss, 1),
            "body_stored_once": bool(bodies),
            "sink": sink.kind,
        }


def smtplib_baseline(sink_kind: str, deliveries: int) -> dict:
    """distro-tracker's way: smtplib, one connection, one transaction per copy."""
    sink = Sink(sink_kind)
    try:
        data = message(0, 4096)
        client = smtplib.SMTP("127.0.0.1", sink.port)
        started = time.perf_counter()
        cpu0 = time.process_time()
        for i in range(deliveries):
            client.sendmail(f"bounces+{i}@{FQDN}", [f"user{i}@example.com"], data)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        client.quit()
    finally:
        sink.stop()
    return {"deliveries": deliveries, "deliveries_per_s": round(deliveries / elapsed, 1),
            "cpu_s_per_1000": round(cpu / deliveries * 1000, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--scenarios", default="100x1000,10x10000,1x10000@1M")
    parser.add_argument("--growth", action="store_true",
                        help="also 1 message to 1k, 10k and 100k subscribers")
    parser.add_argument("--sink", default="auto", choices=["auto", "postfix", "twisted"])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "e2e.json"))
    args = parser.parse_args(argv)
    if not shutil.which("smtp-sink"):
        print("note: Postfix's smtp-sink is not installed (apt-get install postfix);"
              " using a Twisted sink", file=sys.stderr)
    baseline = smtplib_baseline(args.sink, 5000)
    results = []
    scenarios = [parse_scenario(s) for s in args.scenarios.split(",") if s]
    if args.growth:
        scenarios += [(1, 1000, 4096), (1, 10000, 4096), (1, 100000, 4096)]
    for backend in args.backends.split(","):
        for messages, subscribers, size in scenarios:
            r = run_scenario(backend, messages, subscribers, size, args.sink,
                             args.connections, args.timeout)
            r["vs_smtplib"] = round(r["deliveries_per_s"] / baseline["deliveries_per_s"], 2)
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    header = (f"{'backend':<11}{'msgs x subs':>14}{'size':>8}{'deliv/s':>10}"
              f"{'CPU s/1k':>10}{'DB CPU s/1k':>12}{'p50 s':>8}{'p99 s':>8}{'RSS MiB':>9}"
              f"{'x smtplib':>10}")
    print(f"baseline smtplib, 1 connection: {baseline['deliveries_per_s']} deliveries/s "
          f"({baseline['cpu_s_per_1000']} CPU s/1k)")
    print(header)
    for r in results:
        label = f"{r['messages']}x{r['subscribers']}"
        size = f"{r['size'] // 1024}K" if r["size"] < 1 << 20 else f"{r['size'] >> 20}M"
        flag = "" if r["complete"] else " INCOMPLETE"
        db_cpu = "-" if r["db_cpu_s_per_1000"] is None else r["db_cpu_s_per_1000"]
        print(f"{r['backend']:<11}{label:>14}{size:>8}{r['deliveries_per_s']:>10}"
              f"{r['cpu_s_per_1000']:>10}{db_cpu!s:>12}{r['p50_s']!s:>8}{r['p99_s']!s:>8}"
              f"{r['peak_rss_mib']:>9}{r['vs_smtplib']:>10}{flag}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"baseline_smtplib": baseline, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
