#!/usr/bin/env python3
"""
Ingest benchmark: how many messages per second the tracker's LMTP and SMTP
servers accept durably (fsync on), next to baselines measured in the same run:

  - Postfix's smtp-sink (SMTP and LMTP), which accepts and discards: the C limit;
  - a plain Twisted ESMTP server writing Maildir with one fsync per message
    (and the same without fsync).

Each server runs in its own process; a pipelining asyncio client in this
process drives N messages of SIZE bytes over C connections. Reported: messages/s
and the server's CPU seconds per 1,000 messages (from /proc). Not a test.

    .venv/bin/python bench/ingest.py [--messages 5000] [--size 4096]
        [--concurrency 1,10,50] [--only tracker-lmtp,...]

Writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FQDN = "tracker.example.org"
RECIPIENT = f"dispatch+foo_bts@{FQDN}"
SENDER = "someone@example.com"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Servers (run in child processes through --serve)

def serve_tracker(kind: str, spool_dir: str, fsync: bool) -> None:
    sys.path.insert(0, ROOT)
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from trackermail.config import config_from_dict
    from trackermail.ingress.service import build_lmtp_factory, build_smtp_factory
    from trackermail.ingress.spool import Spool
    from trackermail.logs import TextLogObserver

    # Log like a deployment would (twistd -n gives the tracker this
    # observer), to a file.
    logfile = open(os.path.join(spool_dir, "server.log"), "a")
    globalLogBeginner.beginLoggingTo([TextLogObserver(logfile)], redirectStandardIO=False)
    # The benchmark's clients all come from 127.0.0.1, up to 50 at once.
    config = config_from_dict({"tracker": {"fqdn": FQDN, "dev": True},
                               "limits": {"max_connections_per_ip": 0}}, warn=lambda m: None)
    spool = Spool(os.path.join(spool_dir, "spool"), fsync=fsync, reactor=reactor,
                  sync_method=os.environ.get("BENCH_SYNC_METHOD", "auto"))
    build = build_lmtp_factory if kind == "lmtp" else build_smtp_factory
    port = reactor.listenTCP(0, build(config, spool, reactor), interface="127.0.0.1",
                             backlog=128)
    print(port.getHost().port, flush=True)
    profile = os.environ.get("BENCH_PROFILE")
    if profile:
        import cProfile

        prof = cProfile.Profile()
        reactor.addSystemEventTrigger("after", "shutdown", lambda: prof.dump_stats(profile))
        prof.runcall(reactor.run)
    else:
        reactor.run()


def serve_baseline(spool_dir: str, fsync: bool) -> None:
    """
    A plain Twisted ESMTP server: each message written to Maildir tmp/,
    fsynced, renamed into new/, directory fsynced, in eomReceived.
    """
    from twisted.internet import defer, reactor
    from twisted.mail import smtp
    from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
    from zope.interface import implementer

    maildir = os.path.join(spool_dir, "Maildir")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    counter = iter(range(10**9))

    @implementer(IMessageSMTP)
    class Message:
        def __init__(self, rcpt: bytes):
            self.lines = [b"Delivered-To: " + rcpt]

        def lineReceived(self, line):
            self.lines.append(line)

        def eomReceived(self):
            name = f"{time.time():.6f}.P{os.getpid()}Q{next(counter)}.bench"
            tmp = os.path.join(maildir, "tmp", name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.write(fd, b"\n".join(self.lines) + b"\n")
            if fsync:
                os.fsync(fd)
            os.close(fd)
            os.rename(tmp, os.path.join(maildir, "new", name))
            if fsync:
                dfd = os.open(os.path.join(maildir, "new"), os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(dfd)
                os.close(dfd)
            return defer.succeed(name)

        def connectionLost(self):
            self.lines = []

    @implementer(IMessageDelivery)
    class Delivery:
        def receivedHeader(self, helo, origin, recipients):
            return None

        def validateFrom(self, helo, origin):
            return origin

        def validateTo(self, user):
            return lambda: Message(bytes(user.dest))

    class Factory(smtp.SMTPFactory):
        def buildProtocol(self, addr):
            p = smtp.ESMTP()
            p.delivery = Delivery()
            p.factory = self
            p.host = FQDN.encode()
            return p

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1", backlog=128)
    print(port.getHost().port, flush=True)
    reactor.run()


# Client

def make_message(size: int, i: int) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench message {i}\r\n"
        f"Message-ID: <bench.{i}.{os.getpid()}@example.com>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= size:
        body += line
    body += b"x" * max(0, size - len(head) - len(body) - 2) + b"\r\n"
    return head + bytes(body)


class ClientError(Exception):
    pass


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ClientError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def session(port: int, lmtp: bool, count: int, message: bytes, stats: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    code, _ = await read_reply(reader)
    if code != 220:
        raise ClientError(f"greeting {code}")
    writer.write((b"LHLO" if lmtp else b"EHLO") + b" bench.example\r\n")
    code, text = await read_reply(reader)
    if code != 250:
        raise ClientError(f"hello {code} {text!r}")
    envelope = (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n").encode()
    payload = message + b".\r\n"
    # One round trip per message (RFC 2920): the data of message i travels
    # with the envelope of message i+1.
    writer.write(envelope)
    for i in range(count):
        for expected in (250, 250, 354):
            code, text = await read_reply(reader)
            if code != expected:
                raise ClientError(f"got {code} {text!r}, expected {expected}")
        last = i == count - 1
        writer.write(payload + (b"QUIT\r\n" if last else envelope))
        code, text = await read_reply(reader)
        if code != 250:
            stats["failed"] += 1
        else:
            stats["accepted"] += 1
    await read_reply(reader)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def drive(port: int, lmtp: bool, messages: int, concurrency: int, size: int) -> dict:
    message = make_message(size, 0)
    stats = {"accepted": 0, "failed": 0}
    per = [messages // concurrency + (1 if i < messages % concurrency else 0)
           for i in range(concurrency)]
    await asyncio.gather(*(session(port, lmtp, n, message, stats) for n in per if n))
    return stats


# Process handling

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


class Server:
    def __init__(self, name: str, lmtp: bool, argv: list[str] | None, sink: bool = False):
        self.name = name
        self.lmtp = lmtp
        self.argv = argv
        self.sink = sink
        self.proc: subprocess.Popen | None = None
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{name}-", dir="/tmp")

    def start(self) -> int:
        if self.sink:
            port = free_port()
            argv = list(self.argv)
            if os.geteuid() == 0:
                argv[1:1] = ["-u", "nobody"]  # smtp-sink refuses to run as root
            argv += [f"127.0.0.1:{port}", "256"]
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            wait_for_port(port, self.proc)
            return port
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"] + self.argv + [self.tmp],
            stdout=subprocess.PIPE, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"{self.name}: server did not start")
        port = int(line)
        wait_for_port(port, self.proc)
        return port

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stored(self) -> int | None:
        for sub in ("spool/new", "Maildir/new"):
            path = os.path.join(self.tmp, sub)
            if os.path.isdir(path):
                return len(os.listdir(path))
        return None


def servers(with_nofsync: bool) -> list[Server]:
    flag = "fsync"
    fsync = not with_nofsync
    result = [
        Server("tracker-lmtp", True, ["tracker", "lmtp", flag]),
        Server("tracker-smtp", False, ["tracker", "smtp", flag]),
        Server("twisted-esmtp-fsync", False, ["baseline", "smtp", "fsync"]),
        Server("twisted-esmtp-nofsync", False, ["baseline", "smtp", "nofsync"]),
    ]
    if not fsync:
        result += [Server("tracker-lmtp-nofsync", True, ["tracker", "lmtp", "nofsync"])]
    sink = shutil.which("smtp-sink")
    if sink:
        result.append(Server("smtp-sink-lmtp", True, [sink, "-L"], sink=True))
        result.append(Server("smtp-sink-smtp", False, [sink], sink=True))
    return result


def run_one(server: Server, messages: int, concurrency: int, size: int) -> dict:
    port = server.start()
    try:
        before_files = server.stored() or 0
        cpu0 = cpu_seconds(server.proc.pid)
        t0 = time.perf_counter()
        stats = asyncio.run(drive(port, server.lmtp, messages, concurrency, size))
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(server.proc.pid) - cpu0
        stored = server.stored()
        return {
            "server": server.name,
            "protocol": "LMTP" if server.lmtp else "SMTP",
            "concurrency": concurrency,
            "messages": messages,
            "size": size,
            "accepted": stats["accepted"],
            "failed": stats["failed"],
            "stored": None if stored is None else stored - before_files,
            "seconds": round(elapsed, 3),
            "messages_per_s": round(stats["accepted"] / elapsed, 1),
            "cpu_s_per_1000": round(cpu / (messages / 1000), 3),
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--only", default="", help="comma-separated server names")
    parser.add_argument("--sync-method", default="auto", choices=["auto", "fsync", "syncfs"],
                        help="how the tracker's spool syncs a batch (see Spool)")
    parser.add_argument("--with-nofsync", action="store_true",
                        help="also run the tracker's LMTP server without fsync")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "ingest.json"))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ["BENCH_SYNC_METHOD"] = args.sync_method
    only = {s for s in args.only.split(",") if s}

    if not shutil.which("smtp-sink"):
        print("smtp-sink not found: the Postfix baseline is skipped "
              "(install it with: apt-get install postfix)", file=sys.stderr)
    rows = []
    for server in servers(with_nofsync=args.with_nofsync):
        if only and server.name not in only:
            shutil.rmtree(server.tmp, ignore_errors=True)
            continue
        for c in levels:
            # A fresh server (and spool) per run, so runs do not share state.
            fresh = Server(server.name, server.lmtp, server.argv, server.sink)
            row = run_one(fresh, args.messages, c, args.size)
            rows.append(row)
            print(f"{row['server']:<24} c={c:<3} {row['messages_per_s']:>9.1f} msg/s "
                  f"{row['cpu_s_per_1000']:>6.3f} CPU s/1000 "
                  f"(accepted {row['accepted']}, stored {row['stored']})", flush=True)
        shutil.rmtree(server.tmp, ignore_errors=True)

    print()
    header = "| server | protocol | " + " | ".join(f"c={c} msg/s" for c in levels) + " | " + \
        " | ".join(f"c={c} CPU s/1000" for c in levels) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(levels)))
    names = []
    for row in rows:
        if row["server"] not in names:
            names.append(row["server"])
    for name in names:
        mine = {r["concurrency"]: r for r in rows if r["server"] == name}
        proto = next(iter(mine.values()))["protocol"]
        print(f"| {name} | {proto} | "
              + " | ".join(f"{mine[c]['messages_per_s']:.0f}" for c in levels) + " | "
              + " | ".join(f"{mine[c]['cpu_s_per_1000']:.3f}" for c in levels) + " |")

    ratios = {}
    by = {(r["server"], r["concurrency"]): r for r in rows}
    for c in levels:
        base = by.get(("twisted-esmtp-fsync", c))
        for name in ("tracker-lmtp", "tracker-smtp"):
            mine = by.get((name, c))
            if base and mine and base["messages_per_s"]:
                ratios[f"{name}/twisted-esmtp-fsync c={c}"] = round(
                    mine["messages_per_s"] / base["messages_per_s"], 2)
    if ratios:
        print()
        for key, value in ratios.items():
            print(f"{key}: {value}x")

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({
            "benchmark": "ingest",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
            "messages": args.messages, "size": args.size, "fsync": True,
            "sync_method": args.sync_method,
            "results": rows, "ratios": ratios,
        }, f, indent=2)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _, _, what, proto, flag, tmp = sys.argv
        if what == "tracker":
            serve_tracker(proto, tmp, flag == "fsync")
        else:
            serve_baseline(tmp, flag == "fsync")
        sys.exit(0)
    sys.exit(main())
