"""
One-click unsubscribe in a real browser: headless Chromium opens the link
from a mail (nothing changes), then a click on the page's button (driven
through the DevTools protocol, as a person's click) ends the subscription.

Skipped when Debian's C{chromium} is not installed.
"""

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support.tracker import start_tracker
from trackermail.store.subscriptions import subscribe, subscriptions_of, unsubscribe_token

CHROMIUM = shutil.which("chromium")
FQDN = "tracker.example.org"
STEP_TIMEOUT = 60.0


def chromium_args(user_data_dir: str) -> list[str]:
    """A headless Chromium that talks to nothing but the loopback site under test."""
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-dev-shm-usage",
        "--no-pings",
        "--no-proxy-server",
        "--dns-prefetch-disable",
        "--metrics-recording-only",
        "--safebrowsing-disable-auto-update",
        "--disable-features=Translate,OptimizationHints,MediaRouter,"
        "AutofillServerCommunication,CertificateTransparencyComponentUpdater",
        # Every host name fails to resolve: nothing can leave the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={user_data_dir}",
    ]


class WebSocket:
    """
    Just enough of RFC 6455 for the DevTools protocol: a client that sends
    masked text frames and reads (possibly fragmented) text frames.
    """

    def __init__(self, host: str, port: int, path: str, timeout: float):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii"))
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise AssertionError(f"websocket handshake refused: {lines[0]}")
        expected = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode("ascii")).digest())
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("sec-websocket-accept", "").encode("ascii") != expected:
            raise AssertionError("websocket handshake: bad Sec-WebSocket-Accept")

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("websocket closed by the browser")
        self.buffer += data

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode("utf-8"))

    def recv_text(self) -> str:
        parts = []
        while True:
            first, second = self._read(2)
            fin, opcode = first & 0x80, first & 0x0F
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            if fin:
                return b"".join(parts).decode("utf-8")

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class DevTools:
    """A blocking DevTools protocol session on one page target."""

    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        wanted = self.next_id
        self.ws.send_text(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv_text())
            if message.get("id") == wanted:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise AssertionError(f"no answer to {method}")

    def wait_event(self, name: str) -> dict:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == name:
                    del self.events[: i + 1]
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} event")
            message = json.loads(self.ws.recv_text())
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


def page_target(port: int) -> str:
    """The websocket path of a page target of the browser on C{port}."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/json/list")
            targets = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        for target in targets:
            if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                url = target["webSocketDebuggerUrl"]
                return url[url.index("/devtools/"):]
        if time.monotonic() > deadline:
            raise AssertionError(f"no page target in {targets}")
        time.sleep(0.2)


def click_through(port: int, url: str) -> dict:
    """
    Open C{url}, read the page, click its button like a person, read the
    page that follows. Runs in a thread: every step blocks, bounded.
    """
    ws = WebSocket("127.0.0.1", port, page_target(port), timeout=STEP_TIMEOUT)
    try:
        tools = DevTools(ws)
        tools.call("Page.enable")
        tools.call("Page.navigate", url=url)
        tools.wait_event("Page.loadEventFired")
        seen = {
            "before_title": tools.evaluate("document.title"),
            "before_text": tools.evaluate("document.body.innerText"),
            "button": tools.evaluate("document.querySelector('button').textContent"),
        }
        tools.events.clear()
        tools.evaluate("document.querySelector('button').click()")
        tools.wait_event("Page.loadEventFired")
        seen["after_title"] = tools.evaluate("document.title")
        seen["after_text"] = tools.evaluate("document.body.innerText")
        seen["after_url"] = tools.evaluate("location.href")
        return seen
    finally:
        ws.close()


class BrowserUnsubscribeTests(TestCase):
    timeout = 240

    if CHROMIUM is None:
        skip = "chromium is not installed (Debian package chromium)"

    async def start_tracker(self):
        tracker = await start_tracker(self, spool={"fsync": False}, lmtp={"listen": []},
                                      http={"listen": ["tcp:0:interface=127.0.0.1"]})
        self.base, self.store = tracker.base, tracker.store
        await self.store.run(subscribe, "jane@example.net", "dpkg")
        await self.store.run(subscribe, "jane@example.net", "apt")
        token = await self.store.run(unsubscribe_token, tracker.config.tracker.secret_key,
                                     "jane@example.net", "dpkg")
        self.url = f"http://127.0.0.1:{tracker.ports['http']}/unsubscribe/{token}"

    def start_browser(self) -> int:
        """Start Chromium with DevTools on a free port; returns that port."""
        profile = os.path.join(self.base, "profile-devtools")
        os.makedirs(profile)
        proc = subprocess.Popen(
            chromium_args(profile) + ["--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        self.addCleanup(self.stop_browser, proc)
        active = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError("chromium exited: "
                                     + proc.stderr.read().decode("utf-8", "replace")[-2000:])
            try:
                with open(active) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError("chromium did not open its DevTools port")

    @staticmethod
    def stop_browser(proc) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        # Its helper processes (renderer, GPU, zygote) share its session.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.stderr is not None:
            proc.stderr.close()

    def dump_dom(self, url: str) -> str:
        profile = os.path.join(self.base, "profile-dump")
        os.makedirs(profile, exist_ok=True)
        done = subprocess.run(chromium_args(profile) + ["--dump-dom", url],
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=STEP_TIMEOUT, start_new_session=True)
        return done.stdout.decode("utf-8", "replace")

    async def test_open_link_then_click_unsubscribe(self):
        """A person opens the link (nothing changes), clicks Unsubscribe, and is unsubscribed."""
        await self.start_tracker()
        dom = await deferToThread(self.dump_dom, self.url)
        self.assertIn("<button", dom)
        self.assertIn("jane@example.net", dom)
        self.assertIn("dpkg", dom)
        self.assertEqual(await self.store.run(subscriptions_of, "jane@example.net"),
                         ["apt", "dpkg"])

        port = await deferToThread(self.start_browser)
        seen = await deferToThread(click_through, port, self.url)
        self.assertEqual(seen["before_title"], "Unsubscribe from dpkg")
        self.assertIn("jane@example.net", seen["before_text"])
        self.assertEqual(seen["button"], "Unsubscribe")
        self.assertEqual(seen["after_title"], "Unsubscribed")
        self.assertIn("will no longer receive mail", seen["after_text"])
        self.assertEqual(seen["after_url"], self.url)
        self.assertEqual(await self.store.run(subscriptions_of, "jane@example.net"), ["apt"])
        # Let the HTTP connections of the closed browser settle.
        await task.deferLater(reactor, 0.1, lambda: None)
