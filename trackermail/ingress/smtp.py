# -*- test-case-name: tests.ingress.test_smtp -*-
"""
The ESMTP server (and the machinery the LMTP server shares with it).

Built on C{twisted.mail.smtp.ESMTP} for command dispatch, address parsing
and STARTTLS, with the traps listed in TWISTED-NOTES (a) closed:

  - input is read by our own framing: commands are lines of at most
    C{MAX_LENGTH} bytes, message data is scanned for the terminating
    C{CRLF.CRLF} however long its lines are, so body text can never be
    taken for commands;
  - while the spool writes a message, input is held and the transport paused,
    so pipelined commands are answered in order and nothing after the dot is
    answered before the message's own reply;
  - recipient checks are synchronous (L{route_address});
  - SIZE, PIPELINING, 8BITMIME and ENHANCEDSTATUSCODES are advertised and
    honoured, NOOP/VRFY/HELP exist, EHLO works over UNIX sockets;
  - STARTTLS drops whatever was pipelined after it and resets the session.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from email.utils import formatdate
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.mail.smtp import COMMAND, DATA, ESMTP, Address, AddressError

from trackermail.ingress.spool import process_token
from trackermail.routing import Rejection, route_address

log = Logger()

_ENHANCED_RE = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3}( |$)")
_DEFAULT_STATUS = {
    500: b"5.5.2", 501: b"5.5.4", 502: b"5.5.1", 503: b"5.5.1", 504: b"5.5.4",
    421: b"4.4.2", 451: b"4.3.0", 452: b"4.5.3", 454: b"4.7.0", 535: b"5.7.8",
    552: b"5.3.4", 553: b"5.1.3", 555: b"5.5.4",
}
# Replies that carry no enhanced status code (RFC 2034 section 3).
_NO_STATUS = {334, 354}

_HEADER_LINE_RE = re.compile(rb"^[!-9;-~]+:")
_MESSAGE_ID_RE = re.compile(rb"(?im)^message-id[ \t]*:")

MAX_RECIPIENTS = 1000

_queue_counter = itertools.count(1)


def new_queue_id() -> str:
    """
    A short id naming one transaction in replies, logs and the Received:
    line (unique per process run; the Message-ID adds the process token).
    """
    return f"{int(time.time()) & 0xFFFFFF:06X}{next(_queue_counter):06X}"


def _printable(value: bytes, limit: int = 255) -> str:
    text = value[:limit].decode("ascii", "replace")
    return "".join(c if 32 < ord(c) < 127 and c not in "()\\" else "?" for c in text) or "unknown"


def peer_description(address: Any) -> tuple[bytes, str]:
    """
    (bytes for the HELO reply, text for the Received: line) of a peer;
    UNIX socket peers have no C{host}.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host
        return host.encode("ascii"), f"[{host}]"
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host.encode("ascii", "replace"), f"[{host}]"
    return b"localhost", "local socket"


class IngressSettings:
    """
    What a server needs to know; held by the factory.
    """

    def __init__(self, *, fqdn: str, accept_unqualified: bool, max_message_size: int,
                 spool: Any, reactor: Any, tls_context: Any = None, timeout: int = 300):
        self.fqdn = fqdn.lower()
        self.accept_unqualified = accept_unqualified
        self.max_message_size = max_message_size
        self.spool = spool
        self.reactor = reactor
        self.tls_context = tls_context
        self.timeout = timeout


class IngressProtocol(ESMTP):
    """
    Common server side of our ESMTP and LMTP: one transaction at a time,
    every accepted message stored once per distinct recipient.
    """

    MAX_LENGTH = 16384
    protocol_name = "ESMTP"
    noisy = False

    def __init__(self, settings: IngressSettings):
        ESMTP.__init__(self, chal={}, contextFactory=settings.tls_context)
        self.settings = settings
        self.host = settings.fqdn.encode("ascii")
        self.timeout = settings.timeout
        self.callLater = settings.reactor.callLater
        self._in = bytearray()
        self._held: list[bytes] = []
        self._blocked = False
        self._draining = False
        self._skip_long_line = False
        self._restart_input = False
        self._lost = False
        self._reset_transaction()

    # Session state

    def _reset_transaction(self) -> None:
        self._sender: str | None = None
        self._rcpts: list[str] = []
        self._data = bytearray()
        self._data_size = 0
        self._too_big = False
        # Twisted's own fields, kept empty so inherited code sees no
        # transaction of its own.
        self._from = None
        self._to = []

    def greeting(self) -> bytes:
        return self.host + b" ESMTP trackermail"

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        self.mode = COMMAND
        ESMTP.connectionLost(self, reason)

    def timeoutConnection(self) -> None:
        self.sendCode(421, b"4.4.2 " + self.host + b" Error: timeout exceeded")
        self.transport.loseConnection()

    # Replies

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """
        Send a reply, giving every line an enhanced status code
        (ENHANCEDSTATUSCODES) unless it already has one.
        """
        if isinstance(message, str):
            message = message.encode("utf-8", "replace")
        if code not in _NO_STATUS:
            status = _DEFAULT_STATUS.get(code, b"%d.0.0" % (code // 100))
            lines = message.splitlines() or [b""]
            message = b"\n".join(
                line if _ENHANCED_RE.match(line) else (status + b" " + line).rstrip()
                for line in lines
            )
        self._send_plain(code, message)

    def _send_plain(self, code: int, message: bytes) -> None:
        if self._lost:
            return
        ESMTP.sendCode(self, code, message)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._helo = (None, peer_description(peer)[0])
        self.canStartTLS = self._can_start_tls()
        self._send_plain(220, self.greeting())
        self.setTimeout(self.timeout)

    def _can_start_tls(self) -> bool:
        from twisted.internet.interfaces import ITLSTransport

        return self.ctx is not None and ITLSTransport.providedBy(self.transport)

    # Input framing

    def dataReceived(self, data: bytes) -> None:
        if self._blocked:
            self._held.append(data)
            return
        self.resetTimeout()
        self._in += data
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            self._drain_loop()
        finally:
            self._draining = False

    def _drain_loop(self) -> None:
        buf = self._in
        pos = 0
        try:
            while not self._blocked and not self._lost and not self.transport.disconnecting:
                if self.mode == DATA:
                    consumed = self._consume_data(buf, pos)
                    if consumed < 0:
                        pos = len(buf)
                        break
                    pos = consumed
                    continue
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > self.MAX_LENGTH:
                        # Keep swallowing this line until its CRLF comes.
                        self._skip_long_line = True
                        pos = len(buf)
                        self.sendCode(500, b"5.5.2 Error: line too long")
                    break
                line = bytes(buf[pos:end])
                pos = end + 2
                if self._skip_long_line:
                    self._skip_long_line = False
                    continue
                if len(line) > self.MAX_LENGTH:
                    self.sendCode(500, b"5.5.2 Error: line too long")
                    continue
                self.lineReceived(line)
                if self._restart_input:
                    # STARTTLS: whatever followed it in plaintext is dropped.
                    self._restart_input = False
                    pos = len(buf)
                    break
        finally:
            del buf[:pos]

    def _consume_data(self, buf: bytearray, pos: int) -> int:
        """
        Move message data from C{buf[pos:]} into the transaction. Returns the
        position after the terminating dot, or -1 when it has not come yet.
        """
        data = self._data
        scan_from = max(len(data) - 4, 0)
        chunk = memoryview(buf)[pos:]
        self._data_size += len(chunk)
        data += chunk
        chunk.release()
        end = data.find(b"\r\n.\r\n", scan_from)
        if end < 0:
            if self._data_size > self.settings.max_message_size + 3:
                # Too big: keep only what could start the terminator.
                self._too_big = True
                del data[:-4]
            return -1
        taken = len(data) - (end + 5)
        self._data_size -= taken
        raw = bytes(data[: end + 2])
        self.mode = COMMAND
        self._data = bytearray()
        # _data_size counts the ".\r\n" of the terminator too.
        if self._data_size - 3 > self.settings.max_message_size:
            self._too_big = True
        self._end_of_data(raw)
        return len(buf) - taken

    # Blocking while the spool writes

    def _block(self) -> None:
        self._blocked = True
        if not self._lost:
            self.transport.pauseProducing()

    def _unblock(self) -> None:
        self._blocked = False
        if self._lost:
            return
        self.resetTimeout()
        self.transport.resumeProducing()
        held, self._held = self._held, []
        for chunk in held:
            self._in += chunk
        # Called from inside _drain when the spool answered synchronously:
        # the loop there goes on by itself.
        if not self._draining:
            self._drain()

    # Commands

    def lineReceived(self, line: bytes) -> None:
        self.state_COMMAND(line)

    def do_UNKNOWN(self, rest: bytes) -> None:
        self.sendCode(500, b"5.5.2 Error: command not recognized")

    def sendSyntaxError(self) -> None:
        self.sendCode(500, b"5.5.2 Error: bad syntax")

    def lookupMethod(self, command: bytes) -> Any:
        try:
            return ESMTP.lookupMethod(self, command)
        except UnicodeError:
            return None

    def extensions(self) -> dict[bytes, Any]:
        ext: dict[bytes, Any] = {
            b"PIPELINING": None,
            b"SIZE": [str(self.settings.max_message_size).encode("ascii")],
            b"8BITMIME": None,
            b"ENHANCEDSTATUSCODES": None,
        }
        if self.canStartTLS and not self.startedTLS:
            ext[b"STARTTLS"] = None
        return ext

    def _hello(self, rest: bytes, extended: bool) -> None:
        peer = peer_description(self.transport.getPeer())[0]
        self._helo = (rest, peer)
        self._reset_transaction()
        text = self.host
        if extended:
            text += b"\n" + self.listExtensions()
        self._send_plain(250, text)

    def do_HELO(self, rest: bytes) -> None:
        self._hello(rest, extended=False)

    def do_EHLO(self, rest: bytes) -> None:
        self._hello(rest, extended=True)

    def do_NOOP(self, rest: bytes) -> None:
        self.sendCode(250, b"2.0.0 Ok")

    def do_RSET(self, rest: bytes) -> None:
        self._reset_transaction()
        self.sendCode(250, b"2.0.0 Ok")

    def do_VRFY(self, rest: bytes) -> None:
        self.sendCode(252, b"2.5.2 Cannot VRFY user; try RCPT to attempt delivery")

    def do_EXPN(self, rest: bytes) -> None:
        self.sendCode(502, b"5.5.1 Error: EXPN not supported")

    def do_HELP(self, rest: bytes) -> None:
        self.sendCode(214, b"2.0.0 See RFC 5321 and RFC 2033")

    def do_QUIT(self, rest: bytes) -> None:
        self.sendCode(221, b"2.0.0 Bye")
        self.transport.loseConnection()

    def ext_AUTH(self, rest: bytes) -> None:
        self.sendCode(503, b"5.5.1 Error: authentication not enabled")

    def ext_STARTTLS(self, rest: bytes) -> None:
        if self.startedTLS:
            self.sendCode(503, b"5.5.1 Error: TLS already active")
        elif not self.canStartTLS:
            self.sendCode(454, b"4.7.0 TLS not available")
        elif rest.strip():
            self.sendCode(501, b"5.5.4 Syntax: STARTTLS")
        else:
            self.sendCode(220, b"2.0.0 Ready to start TLS")
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            # RFC 3207 4.2: forget everything learnt in plaintext.
            self._helo = (None, self._helo[1])
            self._reset_transaction()
            self._restart_input = True

    def _parse_params(self, opts: bytes | None) -> tuple[dict[str, str], str | None]:
        params: dict[str, str] = {}
        for word in (opts or b"").split():
            key, _, value = word.partition(b"=")
            try:
                params[key.decode("ascii").upper()] = value.decode("ascii")
            except UnicodeDecodeError:
                return params, "5.5.4 Error: bad parameter"
        return params, None

    def do_MAIL(self, rest: bytes) -> None:
        if self._sender is not None:
            self.sendCode(503, b"5.5.1 Error: nested MAIL command")
            return
        m = self.mail_re.match(rest)
        if not m:
            self.sendCode(501, b"5.5.4 Syntax: MAIL FROM:<address>")
            return
        try:
            sender = Address(m.group("path"), None if m.group("path") == b"<>" else self.host)
            sender_text = str(sender)
        except (AddressError, UnicodeError):
            self.sendCode(501, b"5.1.7 Bad sender address syntax")
            return
        params, error = self._parse_params(m.group("opts"))
        if error:
            self.sendCode(555, error.encode())
            return
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit():
                    self.sendCode(501, b"5.5.4 Bad SIZE parameter")
                    return
                if int(value) > self.settings.max_message_size:
                    self.sendCode(552, b"5.3.4 Message size exceeds fixed limit")
                    return
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    self.sendCode(501, b"5.5.4 Bad BODY parameter")
                    return
            else:
                self.sendCode(555, b"5.5.4 Unsupported option: " + key.encode("ascii"))
                return
        self._sender = sender_text
        self._rcpts = []
        self.sendCode(250, b"2.1.0 Ok")

    def do_RCPT(self, rest: bytes) -> None:
        if self._sender is None:
            self.sendCode(503, b"5.5.1 Error: need MAIL command")
            return
        m = self.rcpt_re.match(rest)
        if not m:
            self.sendCode(501, b"5.5.4 Syntax: RCPT TO:<address>")
            return
        if m.group("opts") and m.group("opts").strip():
            self.sendCode(555, b"5.5.4 Unsupported option")
            return
        try:
            recipient = str(Address(m.group("path"), self.host))
        except (AddressError, UnicodeError):
            self.sendCode(501, b"5.1.3 Bad recipient address syntax")
            return
        if len(self._rcpts) >= MAX_RECIPIENTS:
            self.sendCode(452, b"4.5.3 Error: too many recipients")
            return
        try:
            route_address(recipient, self.settings.fqdn, self.settings.accept_unqualified)
        except Rejection as e:
            self.sendCode(
                e.code,
                f"{e.status} <{recipient}>: Recipient address rejected: {e.text}".encode(
                    "ascii", "replace"
                ),
            )
            return
        self._rcpts.append(recipient)
        self.sendCode(250, b"2.1.5 Ok")

    def do_DATA(self, rest: bytes) -> None:
        if self._sender is None:
            self.sendCode(503, b"5.5.1 Error: need MAIL command")
            return
        if not self._rcpts:
            self.sendCode(503, b"5.5.1 Error: need RCPT command")
            return
        self.mode = DATA
        # A CRLF sentinel makes a terminator right after DATA, and a dot
        # on the first line, look like every other line.
        self._data = bytearray(b"\r\n")
        self._data_size = 0
        self._too_big = False
        self.sendCode(354, b"End data with <CR><LF>.<CR><LF>")

    # End of data

    def _end_of_data(self, raw: bytes) -> None:
        sender, rcpts, too_big = self._sender, self._rcpts, self._too_big
        self._reset_transaction()
        queue_id = new_queue_id()
        if too_big:
            log.info("rejected {queue_id} from <{sender}>: message too big",
                     queue_id=queue_id, sender=sender)
            self._reply_after_data(rcpts, {r.lower(): _TOO_BIG for r in rcpts}, queue_id)
            return
        message = self._build_message(raw, rcpts, queue_id)
        # One line that ties the Message-ID to the queue id: `grep msgid`
        # then tells a message's story from reception to its forwarding.
        log.info("received {msgid} as {queue_id} from <{sender}> for {rcpts} ({size} bytes)",
                 msgid=message_id_of(message), queue_id=queue_id, sender=sender,
                 rcpts=rcpts, size=len(message))
        distinct: dict[str, str] = {}
        for rcpt in rcpts:
            distinct.setdefault(rcpt.lower(), rcpt)
        deliveries = [
            defer.maybeDeferred(self.settings.spool.deliver, message, rcpt, sender)
            for rcpt in distinct.values()
        ]
        self._block()
        d = defer.DeferredList(deliveries, consumeErrors=True)
        d.addCallback(self._stored, list(distinct), rcpts, sender, queue_id)
        d.addErrback(self._reply_failed)

    def _stored(self, results: list[tuple[bool, Any]], keys: list[str], rcpts: list[str],
                sender: str, queue_id: str) -> None:
        outcomes: dict[str, tuple[int, bytes]] = {}
        queued = []
        for key, (ok, result) in zip(keys, results):
            if ok:
                outcomes[key] = (250, b"2.0.0 Ok: queued as " + queue_id.encode())
                queued.append(key)
            else:
                outcomes[key] = _WRITE_ERROR
                log.failure("cannot spool {queue_id} for <{rcpt}>", result,
                            queue_id=queue_id, rcpt=key)
        if queued:
            log.info("queued {queue_id} from <{sender}> for {rcpts}",
                     queue_id=queue_id, sender=sender, rcpts=queued)
        try:
            self._reply_after_data(rcpts, outcomes, queue_id)
        finally:
            self._unblock()

    def _reply_failed(self, failure: Any) -> None:
        log.failure("error after end of data", failure)
        self._unblock()

    def _reply_after_data(self, rcpts: list[str], outcomes: dict[str, tuple[int, bytes]],
                          queue_id: str) -> None:
        """
        SMTP: one reply for the whole transaction; any failed copy makes it
        a temporary failure so the client tries again.
        """
        replies = [outcomes[r.lower()] for r in rcpts]
        worst = max(replies, key=lambda reply: reply[0])
        self.sendCode(*worst)

    def _build_message(self, raw: bytes, rcpts: list[str], queue_id: str) -> bytes:
        """
        Turn the wire form (sentinel CRLF, dot-stuffed, CRLF lines) into the
        stored form (LF lines) with our Received: line and a Message-ID.
        """
        body = raw.replace(b"\r\n.", b"\r\n").replace(b"\r\n", b"\n")[1:]
        header_end = body.find(b"\n\n")
        has_headers = bool(_HEADER_LINE_RE.match(body))
        headers = body[: header_end if header_end >= 0 else len(body)] if has_headers else b""
        helo_arg = self._helo[0] if self._helo and self._helo[0] else b"unknown"
        peer_text = peer_description(self.transport.getPeer())[1]
        with_ = self.protocol_name + ("S" if self.startedTLS else "")
        for_ = f"\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        prefix = (
            f"Received: from {_printable(helo_arg)} ({peer_text})\n"
            f"\tby {self.settings.fqdn} (trackermail) with {with_} id {queue_id}{for_};\n"
            f"\t{formatdate(self.settings.reactor.seconds())}\n"
        )
        if not _MESSAGE_ID_RE.search(headers):
            prefix += (f"Message-ID: <{queue_id}.{process_token()}.{os.getpid()}"
                       f"@{self.settings.fqdn}>\n")
        if not has_headers:
            # Body text must not be read as a continuation of our headers.
            prefix += "\n"
        return prefix.encode("ascii", "replace") + body


_MESSAGE_ID_LINE = re.compile(rb"^Message-ID:[ \t]*([^\r\n]*)", re.I | re.M)


def message_id_of(message: bytes) -> str:
    """The Message-ID of a stored message (its header block only), for logs."""
    end = message.find(b"\n\n")
    match = _MESSAGE_ID_LINE.search(message, 0, end if end >= 0 else len(message))
    if match is None:
        return ""
    return _printable(match.group(1).strip(), 200)


_TOO_BIG = (552, b"5.3.4 Error: message file too big")
_WRITE_ERROR = (451, b"4.3.0 Error: queue file write error")


class IngressFactory(protocol.ServerFactory):
    """
    Builds one protocol per connection around shared L{IngressSettings}.
    """

    protocol = IngressProtocol

    def __init__(self, settings: IngressSettings):
        self.settings = settings

    def buildProtocol(self, addr: Any) -> IngressProtocol:
        p = self.protocol(self.settings)
        p.factory = self
        return p


class SMTPIngress(IngressProtocol):
    """
    The ESMTP server on C{[smtp] listen}.
    """

    def _stored(self, results: list[tuple[bool, Any]], keys: list[str], rcpts: list[str],
                sender: str, queue_id: str) -> None:
        # SMTP has one reply for the whole transaction: when a copy could not
        # be stored the client gets 451 and resends to every recipient, so
        # the copies that were stored must go, or those recipients would get
        # the message twice. (LMTP answers per recipient and keeps them.)
        if not all(ok for ok, _ in results):
            for ok, path in results:
                if ok and isinstance(path, str):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        super()._stored(results, keys, rcpts, sender, queue_id)


def tls_context_from_files(certificate: str, key: str) -> Any:
    """
    A server TLS context from PEM files, or None when either is empty.

    @raise ConfigError: a file cannot be read or does not hold PEM data.
    """
    from trackermail.errors import ConfigError

    if not certificate or not key:
        return None
    from twisted.internet import ssl

    try:
        with open(certificate, "rb") as f:
            cert_pem = f.read()
        with open(key, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise ConfigError(f"[smtp] tls_certificate: cannot read {e.filename}: {e.strerror}")
    try:
        return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem).options()
    except Exception as e:
        raise ConfigError(f"[smtp] tls_certificate: not a usable certificate and key: {e}")


def settings_from_config(config: Any, spool: Any, reactor: Any, tls: bool) -> IngressSettings:
    tls_context = None
    if tls:
        tls_context = tls_context_from_files(config.smtp.tls_certificate, config.smtp.tls_key)
    return IngressSettings(
        fqdn=config.tracker.fqdn,
        accept_unqualified=config.tracker.accept_unqualified,
        max_message_size=config.limits.max_message_size,
        spool=spool,
        reactor=reactor,
        tls_context=tls_context,
    )


def build_smtp_factory(config: Any, spool: Any, reactor: Any) -> IngressFactory:
    """
    The ESMTP server factory for C{config} (STARTTLS when a certificate and
    key are configured).
    """
    factory = IngressFactory(settings_from_config(config, spool, reactor, tls=True))
    factory.protocol = SMTPIngress
    return factory
