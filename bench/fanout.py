#!/usr/bin/env python3
"""
Fan-out benchmark: how fast can deliveries leave for the smarthost?

Starts Postfix's smtp-sink on a loopback port (or, when Postfix is not
installed, a small Twisted sink in a subprocess), then sends N deliveries of
a 4 KiB message, each with its own envelope sender and one recipient (VERP,
the way the tracker forwards), once per row:

  smtplib   Python's smtplib.SMTP on one persistent connection: how
            distro-tracker and Mailman send (the baseline);
  pool      trackermail.outbound.pool.SMTPPool (8 pipelining connections).

Every run of a row is a fresh child process (its own reactor) against the
same sink; rows are interleaved --repeat times and the table shows each
row's median run, so a busy neighbour on a small machine skews all rows
alike. CPU s/1000 is the sending process's CPU time; the sink's is shown
apart. Prints a table and writes JSON (default bench/results/fanout.json).

    .venv/bin/python bench/fanout.py [--deliveries 20000] [--connections 8]

Adding a row (the store-backed sender, later): write a function taking a
L{RowContext} and returning a L{RowResult} (plain for blocking code,
`async def` for Twisted code, which runs under task.react) and list it in
L{ROWS}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _common import free_port, scratch_pg_database  # noqa: E402

from trackermail.store.outbox import enqueue
from trackermail.store.outbox_report import outbox_summary

# -- the sink ----------------------------------------------------------------


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the sink did not start listening on port {port}")
            time.sleep(0.05)


class Sink:
    """
    A sink server in a child process; C{cpu_seconds()} reads its CPU time.
    """

    def __init__(self, kind: str):
        self.port = free_port()
        if kind == "auto":
            kind = "postfix" if shutil.which("smtp-sink") else "twisted"
        self.kind = kind
        if kind == "postfix":
            args = [shutil.which("smtp-sink") or "smtp-sink"]
            if os.getuid() == 0:
                args += ["-u", "nobody"]
            args += ["-m", "512", f"127.0.0.1:{self.port}", "512"]
            self.description = "Postfix smtp-sink"
        else:
            print("Postfix smtp-sink not found; using a Twisted sink in a subprocess "
                  "(install Postfix for the reference sink: apt-get install postfix)",
                  file=sys.stderr)
            args = [sys.executable, "-c",
                    "import sys; sys.path.insert(0, %r); "
                    "from tests.support.outbound import run_sink; run_sink(%d)"
                    % (ROOT, self.port)]
            self.description = "Twisted sink (tests.support.outbound.run_sink)"
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for_port(self.port)

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            return ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# -- rows --------------------------------------------------------------------


@dataclass
class RowContext:
    port: int
    deliveries: int
    message: bytes
    connections: int

    def envelope(self, i: int) -> tuple[str, str]:
        """
        Delivery i: a distinct VERP-style sender and one recipient.
        """
        rcpt = f"user{i}@example.org"
        return f"bounces+20260101-user{i}=example.org@tracker.example", rcpt


@dataclass
class RowResult:
    name: str
    deliveries: int
    ok: int
    seconds: float
    cpu_seconds: float
    sink_cpu_seconds: float = 0.0
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds else float("inf")

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds * 1000 / self.deliveries

    @property
    def sink_cpu_per_1000(self) -> float:
        return self.sink_cpu_seconds * 1000 / self.deliveries


def row_smtplib(ctx: RowContext) -> RowResult:
    """
    The baseline: smtplib.SMTP.sendmail on one persistent connection.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    smtp = smtplib.SMTP("127.0.0.1", ctx.port, local_hostname="tracker.example")
    smtp.ehlo()
    ok = 0
    for i in range(ctx.deliveries):
        sender, rcpt = ctx.envelope(i)
        refused = smtp.sendmail(sender, [rcpt], ctx.message)
        if not refused:
            ok += 1
    smtp.quit()
    return RowResult("smtplib, 1 connection", ctx.deliveries, ok,
                     time.perf_counter() - t0, time.process_time() - c0)


async def row_pool(ctx: RowContext) -> RowResult:
    """
    trackermail's SMTPPool: every delivery queued at once, N connections.
    """
    from twisted.internet import defer, reactor

    from trackermail.outbound.pool import SMTPPool

    pool = SMTPPool(reactor, "127.0.0.1", ctx.port, connections=ctx.connections,
                    helo="tracker.example")
    t0, c0 = time.perf_counter(), time.process_time()
    sends = []
    for i in range(ctx.deliveries):
        sender, rcpt = ctx.envelope(i)
        sends.append(pool.send(sender, [rcpt], ctx.message))
    results = await defer.gatherResults(sends)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    await pool.close()
    ok = sum(1 for r in results for code, *_ in r.values() if code == 250)
    return RowResult(f"SMTPPool, {ctx.connections} connections", ctx.deliveries, ok,
                     seconds, cpu)


class ScratchStore:
    """
    A fresh, migrated store for one row: an SQLite file, or a PostgreSQL
    database (TRACKERMAIL_BENCH_PG, default postgresql:///test) made and
    dropped around the run.
    """

    def __init__(self, backend: str):
        import tempfile

        self.backend = backend
        self.drop = None
        if backend == "sqlite":
            self.tmp = tempfile.mkdtemp(prefix="trackermail-bench-")
            self.url = f"sqlite:///{self.tmp}/bench.sqlite"
        else:
            self.url, self.drop = scratch_pg_database("trackermail_fanout")

    async def open(self):
        from trackermail.store import open_store

        self.store = open_store(self.url, pool_size=4)
        await self.store.start()
        await self.store.migrate()
        return self.store

    async def close(self):
        await self.store.close()
        if self.drop:
            self.drop()
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def _row_sender(ctx: RowContext, backend: str) -> RowResult:
    """
    The outbox sender as it runs in the tracker: deliveries queued in the
    store (one body, a VERP sender each) are claimed, sent through the pool
    and recorded as sent (deleted, counted on their message). Queueing is
    not timed; sending and recording are.
    """
    from twisted.internet import reactor

    from trackermail.outbound.pool import SMTPPool
    from trackermail.outbound.sender import OutboxSender

    scratch = ScratchStore(backend)
    store = await scratch.open()
    try:
        await store.run(enqueue, ctx.message, [ctx.envelope(i)[::-1] for i in range(ctx.deliveries)],
                            0.0)
        pool = SMTPPool(reactor, "127.0.0.1", ctx.port, connections=ctx.connections,
                        helo="tracker.example")
        sender = OutboxSender(store, pool, reactor, node="bench")
        t0, c0 = time.perf_counter(), time.process_time()
        sender.startService()
        await sender.when_idle()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        await sender.stopService()
        await pool.close()
        summary = await store.run(outbox_summary, time.time())
    finally:
        await scratch.close()
    return RowResult(f"outbox sender, {backend}", ctx.deliveries, summary.sent, seconds, cpu)


async def row_sender_sqlite(ctx: RowContext) -> RowResult:
    return await _row_sender(ctx, "sqlite")


async def row_sender_postgresql(ctx: RowContext) -> RowResult:
    return await _row_sender(ctx, "postgresql")


# (name, function, is_async)
ROWS: list[tuple[str, Callable[[RowContext], Any], bool]] = [
    ("smtplib", row_smtplib, False),
    ("pool", row_pool, True),
    ("sender-sqlite", row_sender_sqlite, True),
    ("sender-postgresql", row_sender_postgresql, True),
]


# -- planning a fan-out -----------------------------------------------------------


async def plan_fanout(backend: str, subscribers: int, size: int) -> dict:
    """
    Time the dispatch handler planning one message to C{subscribers}
    subscribers: classification, recipient query, VERP signing, the outbox
    rows and the sent counters, in its one transaction.
    """
    from trackermail.config import config_from_dict
    from trackermail.service import build_processor
    from trackermail.store.sql import Many, Rows, Value

    scratch = ScratchStore(backend)
    store = await scratch.open()
    try:
        def seed():
            yield Many("INSERT INTO packages (name, kind) VALUES (?, ?)", [("hello", "source")])
            pid = yield Value("SELECT id FROM packages WHERE name = 'hello'")
            yield Many("INSERT INTO emails (email, email_lower) VALUES (?, ?)",
                       [(f"user{i}@example.org",) * 2 for i in range(subscribers)])
            ids = yield Rows("SELECT id FROM emails")
            yield Many("INSERT INTO subscriptions (email_id, package_id) VALUES (?, ?)",
                       [(i, pid) for (i,) in ids])

        await store.run(seed)
        config = config_from_dict({"tracker": {"fqdn": "tracker.example",
                                               "secret_key": "bench-secret-0123456789"}})
        processor = build_processor(config, store)
        timings = []
        for i in range(3):
            raw = (b"Delivered-To: dispatch+hello_bts@tracker.example\r\n" +
                   make_message(size).replace(b"<bench.1@", b"<plan.%d@" % i)
                   .replace(b"X-Loop: dispatch@tracker.example\r\n", b""))
            t0 = time.perf_counter()
            outcome = await processor.process_bytes(raw)
            timings.append((time.perf_counter() - t0) * 1000)
            assert outcome.fields["recipients"] == subscribers, outcome
        bodies = await store.run(lambda: (yield Value("SELECT COUNT(*) FROM outbox_messages")))
    finally:
        await scratch.close()
    return {"backend": backend, "subscribers": subscribers, "size": size,
            "plan_ms": round(sorted(timings)[1], 1), "bodies_stored": bodies, "messages": 3}


def run_plan_child(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    box: list[dict] = []

    async def main(reactor: Any) -> None:
        box.append(await plan_fanout(args.plan_child, args.plan_subscribers, args.size))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    print(json.dumps(box[0]))
    return 0


def run_plans(args: argparse.Namespace) -> list[dict]:
    results = []
    for backend in ("sqlite", "postgresql"):
        cmd = [sys.executable, os.path.abspath(__file__), "--plan-child", backend,
               "--plan-subscribers", str(args.plan_subscribers), "--size", str(args.size)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


# -- driver ------------------------------------------------------------------


def make_message(size: int) -> bytes:
    head = (
        b"From: Someone <someone@example.net>\r\n"
        b"To: dispatch+hello@tracker.example\r\n"
        b"Subject: Accepted hello 2.10-3 (source) into unstable\r\n"
        b"Message-ID: <bench.1@example.net>\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"X-Loop: dispatch@tracker.example\r\n"
        b"X-Distro-Tracker-Package: hello\r\n"
        b"X-Distro-Tracker-Keyword: upload-source\r\n"
        b"List-Id: <hello.tracker.example>\r\n"
        b"Precedence: list\r\n"
        b"\r\n"
    )
    lines = [head]
    total = len(head)
    i = 0
    while total < size:
        line = b"%06d The quick brown fox jumps over the lazy dog. " % i
        line = (line * 2)[: min(76, size - total - 2)] + b"\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)[:size]


def run_child(args: argparse.Namespace) -> int:
    """
    Run one row in this (fresh) process and print its result as JSON.
    """
    [(name, fn, is_async)] = [row for row in ROWS if row[0] == args.child]
    ctx = RowContext(args.port, args.deliveries, make_message(args.size), args.connections)
    if not is_async:
        result = fn(ctx)
    else:
        from twisted.internet import defer, task

        box: list[RowResult] = []

        async def main(reactor: Any) -> None:
            box.append(await fn(ctx))

        try:
            task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
        except SystemExit as e:
            if e.code:
                raise
        [result] = box
    print(json.dumps(asdict(result)))
    return 0


def run_row(name: str, args: argparse.Namespace, sink: Sink) -> RowResult:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name,
           "--port", str(sink.port), "--deliveries", str(args.deliveries),
           "--size", str(args.size), "--connections", str(args.connections)]
    s0 = sink.cpu_seconds()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    result = RowResult(**json.loads(out.decode().strip().splitlines()[-1]))
    result.sink_cpu_seconds = sink.cpu_seconds() - s0
    return result


def median_run(runs: list[RowResult]) -> RowResult:
    return sorted(runs, key=lambda r: r.per_second)[len(runs) // 2]


def print_table(results: list[RowResult], baseline: Optional[RowResult]) -> None:
    header = (f"{'row':<28} {'deliveries/s':>12} {'CPU s/1000':>10} "
              f"{'sink CPU s/1000':>15} {'vs smtplib':>10} {'ok':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = r.per_second / baseline.per_second if baseline else float("nan")
        print(f"{r.name:<28} {r.per_second:>12.0f} {r.cpu_per_1000:>10.3f} "
              f"{r.sink_cpu_per_1000:>15.3f} {ratio:>9.2f}x {r.ok:>7}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per row, interleaved; the table shows the median run")
    parser.add_argument("--pin", action="store_true",
                        help="run the sink and every row on CPU 0 only (no parallelism"
                             " between sender and sink: the pessimistic figure)")
    parser.add_argument("--sink", choices=("auto", "postfix", "twisted"), default="auto")
    parser.add_argument("--rows", default=",".join(name for name, _, _ in ROWS),
                        help="comma-separated rows to run (default: all)")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "fanout.json"))
    parser.add_argument("--plan-subscribers", type=int, default=10000,
                        help="also time planning one fan-out to this many subscribers"
                             " on SQLite and PostgreSQL (0: skip)")
    parser.add_argument("--plan-child", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)
    if args.plan_child:
        return run_plan_child(args)

    names = [name for name in args.rows.split(",") if name]
    unknown = set(names) - {name for name, _, _ in ROWS}
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    if args.pin:
        # Children and the sink inherit the affinity.
        os.sched_setaffinity(0, {0})
    sink = Sink(args.sink)
    runs: dict[str, list[RowResult]] = {name: [] for name in names}
    try:
        # Interleaved, so a busy neighbour on the machine hurts every row alike.
        for i in range(args.repeat):
            for name in names:
                print(f"run {i + 1}/{args.repeat}: {name} ...", file=sys.stderr, flush=True)
                runs[name].append(run_row(name, args, sink))
    finally:
        sink.stop()

    results = [median_run(runs[name]) for name in names]
    baseline = results[names.index("smtplib")] if "smtplib" in names else None
    print(f"\n{args.deliveries} deliveries of {args.size} bytes, one recipient and a distinct "
          f"envelope sender each, to {sink.description} on 127.0.0.1; median of "
          f"{args.repeat} interleaved runs ({os.cpu_count()} CPUs"
          f"{', all work pinned to CPU 0' if args.pin else ''}, "
          f"Python {platform.python_version()})\n")
    print_table(results, baseline)
    failed = [r for rs in runs.values() for r in rs if r.ok != r.deliveries]
    for r in failed:
        print(f"WARNING: {r.name}: only {r.ok} of {r.deliveries} deliveries got 250",
              file=sys.stderr)

    def row_json(r: RowResult) -> dict:
        return dict(asdict(r), deliveries_per_second=round(r.per_second, 1),
                    cpu_seconds_per_1000=round(r.cpu_per_1000, 4),
                    sink_cpu_seconds_per_1000=round(r.sink_cpu_per_1000, 4),
                    ratio_vs_smtplib=(round(r.per_second / baseline.per_second, 2)
                                      if baseline else None))

    plans = run_plans(args) if args.plan_subscribers else []
    if plans:
        print(f"\nplanning one fan-out of a {args.size}-byte message to "
              f"{args.plan_subscribers} subscribers (median of 3, one transaction each)")
        print(f"{'backend':<12} {'plan ms':>9} {'bodies stored':>14}")
        for p in plans:
            print(f"{p['backend']:<12} {p['plan_ms']:>9} {p['bodies_stored']:>14}")

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    report = {
        "planning": plans,
        "benchmark": "fanout",
        "deliveries": args.deliveries,
        "message_size": args.size,
        "connections": args.connections,
        "repeat": args.repeat,
        "pinned_to_one_cpu": args.pin,
        "sink": sink.description,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [row_json(r) for r in results],
        "runs": {name: [row_json(r) for r in rs] for name, rs in runs.items()},
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"\nwrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
