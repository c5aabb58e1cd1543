# -*- test-case-name: tests.ingress.test_smtp -*-
"""
The ESMTP server protocol (and what the LMTP server shares with it).

Built on C{twisted.mail.smtp.ESMTP} for command dispatch, address parsing
and STARTTLS, with the traps of Twisted's server closed:

  - input is read by our own framing: commands are lines of at most
    C{MAX_LENGTH} bytes (a longer one gets one 500 and is skipped; a bare
    LF ends a command too), message data streams through a
    L{DataDecoder} into the spool as it arrives, so body text is never
    taken for commands and memory never depends on message size;
  - a transaction is one spool file for all its recipients, made visible
    by one rename: a 250 means all of them will be processed, a 4xx that
    none will;
  - while the spool commits a message, input is held and the transport
    paused, so pipelined commands are answered in order and nothing after
    the dot is answered before the message's own reply;
  - recipient checks are synchronous (L{route_address});
  - limits: connections (in total and per client address, 421 beyond), a
    short idle timeout under connection stress, recipients per
    transaction, the time of a whole transaction and the rate of its data;
  - STARTTLS drops whatever was pipelined after it, resets the session,
    and a new EHLO is needed before MAIL.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.logger import Logger
from twisted.mail.smtp import COMMAND, DATA, ESMTP, Address, AddressError

from trackermail.ingress.server import mail_parameters
from trackermail.ingress.spool import Envelope, new_queue_id
from trackermail.ingress.stamping import (
    DataDecoder,
    Stamper,
    peer_description,
    received_line,
)
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

#: Bytes a writer may hold before the client is paused.
HIGH_WATER = 1024 * 1024
#: How often the data rate of a DATA phase is checked (seconds).
RATE_CHECK = 10.0

#: Replies every transaction gets, as they go on the wire.
_COMMON_REPLIES = {
    (250, b"2.1.0 Ok"): b"250 2.1.0 Ok\r\n",
    (250, b"2.1.5 Ok"): b"250 2.1.5 Ok\r\n",
    (250, b"2.0.0 Ok"): b"250 2.0.0 Ok\r\n",
    (354, b"End data with <CR><LF>.<CR><LF>"): b"354 End data with <CR><LF>.<CR><LF>\r\n",
}

_TOO_BIG = (552, b"5.3.4 Error: message file too big")
_WRITE_ERROR = (451, b"4.3.0 Error: queue file write error")


class IngressProtocol(ESMTP):
    """
    Common server side of our ESMTP and LMTP: one transaction at a time,
    every accepted transaction stored once for all its recipients.
    """

    MAX_LENGTH = 16384
    protocol_name = "ESMTP"
    noisy = False

    def __init__(self, settings: Any):
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
        self._admitted: str | None = None
        self._need_hello = False
        self._transaction_timer: Any = None
        self._rate_timer: Any = None
        self._reset_transaction()

    # Session state

    def _reset_transaction(self) -> None:
        self._sender: str | None = None
        self._rcpts: list[str] = []
        self._routes: dict[str, Any] = {}
        self._decoder: DataDecoder | None = None
        self._writer: Any = None
        self._stamper: Stamper | None = None
        self._size = 0
        self._too_big = False
        self._data_started = 0.0
        self._queue_id = ""
        self._cancel_timers()
        # Twisted's own fields, kept empty so inherited code sees no
        # transaction of its own.
        self._from = None
        self._to = []

    def _cancel_timers(self) -> None:
        for name in ("_transaction_timer", "_rate_timer"):
            timer = getattr(self, name, None)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    def greeting(self) -> bytes:
        return self.host + b" ESMTP trackermail"

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        helo_host, _ = peer_description(peer)
        self._helo = (None, helo_host)
        client = helo_host.decode("ascii", "replace")
        refused = self.factory.admit(client) if self.factory is not None else None
        if refused is not None:
            log.info("refused a connection from {client}: {reason}", client=client,
                     reason=refused)
            self._send_plain(421, b"4.7.0 " + self.host + b" Error: " + refused.encode()
                             + b"; try again later")
            self._lost = True
            self.transport.loseConnection()
            return
        self._admitted = client
        if self.factory is not None:
            self.factory.protocols.add(self)
        self.canStartTLS = self._can_start_tls()
        self._send_plain(220, self.greeting())
        self.setTimeout(self._idle_timeout())

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        self.mode = COMMAND
        if self._writer is not None:
            self._writer.abort()
        self._reset_transaction()
        if self._admitted is not None and self.factory is not None:
            self.factory.protocols.discard(self)
            self.factory.release(self._admitted)
            self._admitted = None
        ESMTP.connectionLost(self, reason)

    def _idle_timeout(self) -> float:
        if self.factory is not None and self.factory.stressed:
            return min(self.settings.stress_timeout, self.settings.timeout)
        return self.settings.timeout

    def shorten_idle_timeout(self) -> None:
        """Use the stress timeout from now on if it is shorter (see the factory)."""
        period = self._idle_timeout()
        if self.timeOut is not None and period < self.timeOut and self.mode != DATA:
            self.setTimeout(period)

    def timeoutConnection(self) -> None:
        self._abort_transaction()
        self.sendCode(421, b"4.4.2 " + self.host + b" Error: timeout exceeded")
        self.transport.loseConnection()

    def _can_start_tls(self) -> bool:
        from twisted.internet.interfaces import ITLSTransport

        return self.ctx is not None and ITLSTransport.providedBy(self.transport)

    # Replies

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """
        Send a reply, giving every line an enhanced status code
        (ENHANCEDSTATUSCODES) unless it already has one.
        """
        wire = _COMMON_REPLIES.get((code, message))
        if wire is not None:
            # The replies of every transaction, rendered once.
            if not self._lost:
                self.transport.write(wire)
            return
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

    # Input framing

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        if self._blocked:
            self._held.append(data)
            return
        period = self._idle_timeout()
        if period != self.timeOut:
            self.setTimeout(period)
        else:
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
            while (not self._blocked and not self._lost and pos < len(buf)
                   and not self.transport.disconnecting):
                if self.mode == DATA:
                    rest = self._consume_data(bytes(memoryview(buf)[pos:]))
                    pos = len(buf) if rest is None else len(buf) - len(rest)
                    continue
                end = buf.find(b"\n", pos)
                if end < 0:
                    if len(buf) - pos > self.MAX_LENGTH:
                        # Swallow this line until its end comes, answering
                        # once, not once per chunk.
                        if not self._skip_long_line:
                            self.sendCode(500, b"5.5.2 Error: line too long")
                        self._skip_long_line = True
                        pos = len(buf)
                    break
                line = bytes(buf[pos:end]).rstrip(b"\r")
                pos = end + 1
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

    def _consume_data(self, data: bytes) -> bytes | None:
        """
        Stream DATA bytes into the spool writer. Returns the bytes after the
        terminating dot, or None when it has not come yet.
        """
        decoded, rest = self._decoder.feed(data)
        if decoded and not self._too_big:
            self._size += len(decoded)
            if self._size > self.settings.max_message_size:
                self._too_big = True
                self._writer.abort()
            else:
                self._writer.write(self._stamper.feed(decoded))
                if self._writer.pending > HIGH_WATER and rest is None:
                    self._wait_for_writer()
        if rest is not None:
            self.mode = COMMAND
            self._end_of_data()
        return rest

    def _wait_for_writer(self) -> None:
        # The disk is slower than the client: stop reading until the
        # writer has caught up, so its buffer stays bounded.
        self._block()
        writer = self._writer
        d = writer.committer.when_drained(writer)
        d.addCallback(lambda _: self._unblock())

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
        self._need_hello = False
        self._abort_transaction()
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
        self._abort_transaction()
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
            # RFC 3207 4.2: forget everything learnt in plaintext, the
            # client's name included: it must say EHLO again.
            self._helo = (None, self._helo[1])
            self._need_hello = True
            self._abort_transaction()
            self._restart_input = True

    def do_MAIL(self, rest: bytes) -> None:
        if self._need_hello:
            self.sendCode(503, b"5.5.1 Error: send EHLO first (after STARTTLS)")
            return
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
        refusal, announced = mail_parameters(m.group("opts"), self.settings.max_message_size)
        if refusal is not None:
            self.sendCode(*refusal)
            return
        if not self._room_for(announced):
            self._refuse("MAIL", 452, b"4.3.1 Insufficient system storage")
            return
        self._sender = sender_text
        self._rcpts = []
        self._routes = {}
        if self.settings.transaction_time:
            self._transaction_timer = self.callLater(self.settings.transaction_time,
                                                     self._transaction_too_long)
        self.sendCode(250, b"2.1.0 Ok")

    def _room_for(self, size: int) -> bool:
        free = getattr(self.settings.spool, "free_bytes", None)
        if free is None:
            return True
        try:
            return free() >= size + self.settings.space_margin
        except OSError:
            return True  # the write itself will tell

    def _transaction_too_long(self) -> None:
        self._transaction_timer = None
        log.info("closing a connection from {client}: transaction over {limit}s",
                 client=self._admitted, limit=self.settings.transaction_time)
        self._abort_transaction()
        self.sendCode(421, b"4.4.2 " + self.host + b" Error: transaction took too long")
        self.transport.loseConnection()

    def _refuse(self, what: str, code: int, text: bytes, **fields: Any) -> None:
        """Answer a refusal and log it with what was refused, from whom and why."""
        log.info("refused {what} from <{sender}> ({client}) on {service}: {code} {reason}",
                 what=what, sender=self._sender or "", client=self._admitted,
                 service=self.protocol_name.lower(), code=code,
                 reason=text.decode("ascii", "replace"), **fields)
        self.sendCode(code, text)

    def do_RCPT(self, rest: bytes) -> None:
        if self._sender is None:
            self.sendCode(503, b"5.5.1 Error: need MAIL command")
            return
        m = self.rcpt_re.match(rest)
        if not m:
            self._refuse("RCPT", 501, b"5.5.4 Syntax: RCPT TO:<address>")
            return
        if m.group("opts") and m.group("opts").strip():
            self._refuse("RCPT", 555, b"5.5.4 Unsupported option")
            return
        try:
            recipient = str(Address(m.group("path"), self.host))
        except (AddressError, UnicodeError):
            self._refuse("RCPT", 501, b"5.1.3 Bad recipient address syntax")
            return
        if len(self._rcpts) >= self.settings.max_recipients:
            self._refuse(f"RCPT <{recipient}>", 452, b"4.5.3 Error: too many recipients",
                         recipient=recipient)
            return
        try:
            route = route_address(recipient, self.settings.fqdn, self.settings.accept_unqualified)
        except Rejection as e:
            self._refuse(f"RCPT <{recipient}>", e.code,
                         f"{e.status} <{recipient}>: Recipient address rejected: {e.text}".encode(
                             "ascii", "replace"), recipient=recipient)
            return
        self._rcpts.append(recipient)
        self._routes.setdefault(recipient.lower(), (recipient, route))
        self.sendCode(250, b"2.1.5 Ok")

    def do_DATA(self, rest: bytes) -> None:
        if self._sender is None:
            self.sendCode(503, b"5.5.1 Error: need MAIL command")
            return
        if not self._rcpts:
            self.sendCode(503, b"5.5.1 Error: need RCPT command")
            return
        now = self.settings.reactor.seconds()
        self._queue_id = new_queue_id(now)
        accepted = list(self._routes.values())
        envelope = Envelope(
            queue_id=self._queue_id, sender=self._sender,
            recipients=tuple(r for r, _ in accepted), routes=tuple(route for _, route in accepted),
            received=now, protocol=self._with(), client=str(self._admitted or ""),
        )
        self._writer = self.settings.spool.open_transaction(envelope)
        self._stamper = Stamper(
            received_line(helo=self._helo[0] if self._helo else None,
                          peer=peer_description(self.transport.getPeer())[1],
                          fqdn=self.settings.fqdn, protocol=self._with(),
                          queue_id=self._queue_id, recipients=self._rcpts, when=now),
            self.settings.fqdn, self._queue_id)
        self._decoder = DataDecoder()
        self._size = 0
        self._too_big = False
        self._data_started = now
        if self.settings.min_data_rate:
            self._rate_timer = self.callLater(RATE_CHECK, self._check_rate)
        self.mode = DATA
        self.sendCode(354, b"End data with <CR><LF>.<CR><LF>")

    def _with(self) -> str:
        return self.protocol_name + ("S" if self.startedTLS else "")

    def _check_rate(self) -> None:
        self._rate_timer = None
        if self.mode != DATA or self._decoder is None:
            return
        elapsed = self.settings.reactor.seconds() - self._data_started
        rate = self._decoder.wire_bytes / elapsed if elapsed > 0 else float("inf")
        if elapsed >= self.settings.data_rate_grace and rate < self.settings.min_data_rate:
            log.info("closing a connection from {client}: data at {rate:.0f} bytes/s, "
                     "below {limit}", client=self._admitted, rate=rate,
                     limit=self.settings.min_data_rate)
            self._abort_transaction()
            self.sendCode(421, b"4.4.2 " + self.host + b" Error: data too slow")
            self.transport.loseConnection()
            return
        self._rate_timer = self.callLater(RATE_CHECK, self._check_rate)

    def _abort_transaction(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        self.mode = COMMAND
        self._reset_transaction()

    # End of data

    def _end_of_data(self) -> None:
        writer, stamper = self._writer, self._stamper
        sender, rcpts, too_big = self._sender, self._rcpts, self._too_big
        queue_id, size = self._queue_id, self._size
        self._writer = None
        self._reset_transaction()
        if too_big:
            log.info("rejected {queue_id} from <{sender}>: message too big",
                     queue_id=queue_id, sender=sender)
            self._reply_after_data(rcpts, _TOO_BIG, queue_id)
            return
        writer.write(stamper.finish())
        self._block()
        d = writer.commit()
        d.addCallbacks(self._stored, self._not_stored,
                       callbackArgs=(rcpts, sender, queue_id, size, stamper.message_id),
                       errbackArgs=(rcpts, sender, queue_id))
        d.addErrback(lambda f: log.failure("error after end of data", f))
        d.addBoth(lambda _: self._unblock())

    def _stored(self, path: str, rcpts: list[str], sender: str, queue_id: str,
                size: int, msgid: str) -> None:
        log.info("queued {queue_id} {msgid} from <{sender}> for {rcpts} ({size} bytes)",
                 queue_id=queue_id, sender=sender, rcpts=rcpts, size=size, msgid=msgid)
        self._reply_after_data(rcpts, (250, b"2.0.0 Ok: queued as " + queue_id.encode()),
                               queue_id)

    def _not_stored(self, failure: Any, rcpts: list[str], sender: str, queue_id: str) -> None:
        log.failure("cannot spool {queue_id} from <{sender}>", failure,
                    queue_id=queue_id, sender=sender)
        self._reply_after_data(rcpts, _WRITE_ERROR, queue_id)

    def _reply_after_data(self, rcpts: list[str], reply: tuple[int, bytes],
                          queue_id: str) -> None:
        """SMTP: one reply for the whole transaction."""
        self.sendCode(*reply)


class SMTPIngress(IngressProtocol):
    """The ESMTP server on C{[smtp] listen}."""

