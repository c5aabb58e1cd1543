# -*- test-case-name: tests.outbound.test_connection -*-
"""
One persistent SMTP client connection to the smarthost: the session's state
machine (setup lives in L{trackermail.outbound.session}).

  - speaks RFC 2920 PIPELINING when the server offers it: MAIL, every RCPT
    and DATA go out in one write, and after a message's final "." the next
    transaction's MAIL/RCPT/DATA follow in the same write; without it, it
    runs lock-step;
  - runs many transactions per session and sends RSET after one that did
    not end with the end-of-data reply;
  - sends C{SIZE=} and C{BODY=8BITMIME} when offered, and refuses a message
    over the advertised SIZE with a permanent 552;
  - never errbacks a transaction: every recipient gets a L{Reply} that says
    which stage it came from.

The connection does not own a queue: it asks its I{source} (the pool) for
the next L{Transaction} whenever it can take one.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Any, Callable, Optional

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from trackermail.outbound import direct
from trackermail.outbound.interface import (
    DATA,
    LOCAL,
    MAIL,
    RCPT,
    SESSION,
    Reply,
)
from trackermail.outbound.session import ClientSettings, SessionSetup, setup_failure
from trackermail.outbound.transaction import Transaction, TransactionSource
from trackermail.outbound.wire import bad_address_text, encode_address, reply_text

__all__ = ["ClientSettings", "SMTPConnection", "Transaction", "TransactionSource"]

log = Logger()

# Replies longer than this without a line end are not SMTP (RFC 5321 allows
# 512 octets per reply line).
MAX_REPLY_BUFFER = 65536

_SETUP = "setup"
_READY = "ready"
_CLOSING = "closing"
_CLOSED = "closed"

NO_REPLY = Reply(451, "4.3.0 no reply", SESSION)
NO_RECIPIENTS = Reply(554, "5.5.1 no valid recipients", LOCAL)


class SMTPConnection(SessionSetup, Protocol):
    """
    A client session that runs transactions taken from C{source}.
    """

    def __init__(self, source: TransactionSource, settings: ClientSettings,
                 clock: Any):
        self._source = source
        self._settings = settings
        self._clock = clock
        self._buffer = b""
        self._reply_lines: list[bytes] = []
        # Handlers for replies the server owes us, oldest first.
        self._expect: deque[Callable[[int, list[bytes]], None]] = deque()
        # Commands not yet written (lock-step mode holds all but one back).
        self._unsent: deque[tuple[bytes, Callable, Optional[Transaction]]] = deque()
        self._out: list[bytes] = []
        self.extensions: dict[str, list[str]] = {}
        self.pipelining = False
        self.max_size = 0
        self.tls = False
        self.state = _SETUP
        self._envelope: Optional[Transaction] = None
        self._in_data: Optional[Transaction] = None
        self._need_rset = False
        self._retiring = False
        self._starttls_refused = False
        self._drop_input = False
        self._receiving = False
        self._direct = False
        self._aborted = False
        self._setup_failure: Optional[Reply] = None
        self._lost_reason: Optional[str] = None
        self.transactions = 0
        self._reply_timer = None
        self._idle_timer = None

    # -- plumbing ---------------------------------------------------------

    def connectionMade(self) -> None:
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            # Without it Nagle holds back every small pipelined write until
            # the previous one is acknowledged: ~100x slower on loopback.
            try:
                set_nodelay(True)
            except OSError:
                pass
        self._direct = direct.can_write_directly(self.transport)
        self._expect.append(self._on_greeting)
        self._update_timers()

    def dataReceived(self, data: bytes) -> None:
        if self._aborted or self.state == _CLOSED:
            return
        if self._reply_timer is not None:
            self._reply_timer.reset(self._settings.timeout)
        buf = self._buffer + data if self._buffer else data
        lines = buf.split(b"\n")
        # The last piece is an incomplete line (usually b"").
        self._buffer = lines.pop()
        reply_lines = self._reply_lines
        # Writes made while handling these replies go out in one write at
        # the end (with pipelining: one message's content plus the next
        # envelope).
        self._receiving = True
        try:
            for line in lines:
                if line[-1:] == b"\r":
                    line = line[:-1]
                sep = line[3:4]
                if sep == b" " or sep == b"":
                    code = line[:3]
                    if len(code) != 3 or not code.isdigit():
                        self._protocol_error("malformed reply line {!r}".format(line[:80]))
                        break
                    reply_lines.append(line[4:])
                    self._reply_lines = []
                    self._reply(int(code), reply_lines)
                    reply_lines = self._reply_lines
                    if self._drop_input or self._aborted:
                        # After STARTTLS's 220 anything else in this read
                        # was sent in clear and must not be taken as a
                        # TLS-protected reply.
                        self._drop_input = False
                        self._buffer = b""
                        break
                elif sep == b"-" and line[:3].isdigit():  # 4th byte: 3 digits
                    reply_lines.append(line[4:])
                else:
                    self._protocol_error("malformed reply line {!r}".format(line[:80]))
                    break
        finally:
            self._receiving = False
        if len(self._buffer) > MAX_REPLY_BUFFER:
            self._buffer = b""
            self._protocol_error("reply line too long")
        self._flush()

    def _reply(self, code: int, lines: list[bytes]) -> None:
        if not self._expect:
            if code == 421:
                self._lost_reason = "4.4.2 {} closed the session: 421 {}".format(
                    self._settings.peer, reply_text(lines))
                self._close_now()
            else:
                self._protocol_error("unexpected reply {} {}".format(code, reply_text(lines)))
            return
        self._expect.popleft()(code, lines)
        if code == 421 and self.state != _CLOSED:
            # The server is going away (RFC 5321 3.8): whatever else is in
            # flight gets a 4xx from connectionLost.
            self._lost_reason = "4.4.2 {} closed the session: 421 {}".format(
                self._settings.peer, reply_text(lines))
            self._close_now()
            return
        if self._unsent:
            self._pump()

    def _write(self, data: bytes) -> None:
        self._out.append(data)

    def _flush(self) -> None:
        if self._out:
            out = self._out
            self._out = []
            if self.state != _CLOSED and not self._aborted:
                t = self.transport
                if len(out) > 1 and sum(map(len, out)) > 65536:
                    # Big message content: hand the pieces over as they are
                    # rather than copying them into one string per copy.
                    t.writeSequence(out)
                    self._update_timers()
                    return
                direct.write(t, b"".join(out) if len(out) > 1 else out[0], self._direct)
        self._update_timers()

    def _command(self, line: bytes, handler: Callable,
                 txn: Optional[Transaction] = None) -> None:
        self._unsent.append((line, handler, txn))
        self._pump()

    def _pump(self) -> None:
        unsent = self._unsent
        if not unsent:
            return
        if self.pipelining and self.state == _READY:
            expect = self._expect
            write = self._out.append
            while unsent:
                line, handler, _ = unsent.popleft()
                write(line + b"\r\n")
                expect.append(handler)
        elif not self._expect:
            line, handler, _ = unsent.popleft()
            self._write(line + b"\r\n")
            self._expect.append(handler)

    def _busy(self) -> bool:
        return bool(self._expect or self._unsent or self._envelope is not None
                    or self._in_data is not None)

    def _update_timers(self) -> None:
        if self.state == _CLOSED:
            return
        if self._expect:
            if self._reply_timer is None:
                self._reply_timer = self._clock.callLater(
                    self._settings.timeout, self._on_timeout)
        elif self._reply_timer is not None:
            self._reply_timer.cancel()
            self._reply_timer = None
        idle = self.state == _READY and not self._busy()
        if idle:
            if self._idle_timer is None and self._settings.idle_timeout > 0:
                self._idle_timer = self._clock.callLater(
                    self._settings.idle_timeout, self._on_idle)
        elif self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _cancel_timers(self) -> None:
        for name in ("_reply_timer", "_idle_timer"):
            timer = getattr(self, name)
            if timer is not None:
                if timer.active():
                    timer.cancel()
                setattr(self, name, None)

    def _on_timeout(self) -> None:
        self._reply_timer = None
        log.warn("{peer} did not answer within {timeout} s; closing the connection",
                 peer=self._settings.peer, timeout=self._settings.timeout)
        self._lost_reason = "4.4.2 timeout waiting for {}".format(self._settings.peer)
        self._close_now()

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self.state == _READY and not self._busy():
            self._quit()
            self._flush()

    def _protocol_error(self, why: str) -> None:
        log.error("protocol error talking to {peer}: {why}",
                  peer=self._settings.peer, why=why)
        self._lost_reason = "4.5.0 protocol error talking to {}: {}".format(
            self._settings.peer, why)
        if self.state == _SETUP:
            self._setup_failure = setup_failure(self._lost_reason)
        self._close_now()

    def _close_now(self) -> None:
        if self.state == _CLOSED or self._aborted:
            return
        self._aborted = True
        if self.state != _SETUP:
            self.state = _CLOSING
        self._out = []
        self._unsent.clear()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.state == _CLOSED:
            return
        was = self.state
        self.state = _CLOSED
        self._cancel_timers()
        self._expect.clear()
        self._unsent.clear()
        why = reason.getErrorMessage() if reason is not None else "connection lost"
        if was == _SETUP:
            failure = self._setup_failure
            if failure is None:
                if self.tls:
                    failure = setup_failure("4.7.0 TLS with {} failed: {}".format(
                        self._settings.peer, why))
                    log.error("TLS with {peer} failed: {why}",
                              peer=self._settings.peer, why=why)
                else:
                    failure = setup_failure("4.4.2 connection to {} lost before it was"
                                    " ready: {}".format(self._settings.peer, why))
            self._source.connection_failed(self, failure)
            return
        lost = self._lost_reason or "4.4.2 connection to {} lost: {}".format(
            self._settings.peer, why)
        requeue = []
        for txn in (self._in_data, self._envelope):
            if txn is None or txn.done:
                continue
            if (txn.mail_reply is None and not txn.refused and not txn.data_sent
                    and txn.requeued == 0):
                # Nothing of it can have been delivered and the server did
                # not object to it (typically it closed an idle session as
                # we wrote): another connection may try it once more.
                txn.requeued += 1
                txn.reset()
                requeue.append(txn)
            else:
                log.warn("connection to {peer} lost during a transaction: {why}",
                         peer=self._settings.peer, why=lost)
                txn.finish(Reply(421, lost, SESSION))
        self._in_data = self._envelope = None
        self._source.connection_closed(self, requeue)

    def _ready(self) -> None:
        self.state = _READY
        self._source.connection_ready(self)
        if self.state == _READY:
            self.take_work()

    # -- transactions -----------------------------------------------------

    def can_accept(self) -> bool:
        """
        Whether a new transaction could be started now.
        """
        return (self.state == _READY and not self._retiring
                and self._envelope is None
                and (self._in_data is None or self.pipelining))

    def take_work(self) -> None:
        """
        Start as many transactions from the source as the session allows
        (two with pipelining: one sending its content, one its envelope).
        """
        while self.can_accept():
            max_transactions = self._settings.max_transactions
            if max_transactions and self.transactions >= max_transactions:
                self._retiring = True
                break
            txn = self._source.next_transaction(self)
            if txn is None:
                break
            self._start(txn)
        if self._retiring and self.state == _READY and not self._busy():
            self._quit()
        if not self._receiving:
            self._flush()

    def retire(self) -> None:
        """
        Finish what is in flight, take nothing new, then QUIT.
        """
        self._retiring = True
        if self.state == _SETUP:
            self._setup_failure = Reply(421, "4.3.2 shutting down", LOCAL)
            self.transport.loseConnection()
        elif self.state == _READY and not self._busy():
            self._quit()
            self._flush()

    def _quit(self) -> None:
        self.state = _CLOSING
        self._need_rset = False
        self._write(b"QUIT\r\n")
        self._expect.append(self._on_quit)

    def _on_quit(self, code: int, lines: list[bytes]) -> None:
        self.transport.loseConnection()

    def _start(self, txn: Transaction) -> None:
        self.transactions += 1
        ext = self.extensions
        utf8 = "SMTPUTF8" in ext
        sender = encode_address(txn.mail_from, utf8)
        if sender is None:
            txn.fail_all(self._bad_address_reply(txn.mail_from, "5.1.7", utf8))
            return
        recipients = []
        for rcpt in txn.recipients:
            encoded = encode_address(rcpt, utf8)
            if encoded is None:
                txn.results[rcpt] = self._bad_address_reply(rcpt, "5.1.3", utf8)
            else:
                recipients.append((rcpt, encoded))
        if not recipients:
            txn.finish(NO_RECIPIENTS)
            return
        size = txn.size
        if self.max_size and size > self.max_size:
            txn.fail_all(Reply(552, "5.3.4 message size {} exceeds the limit of {} ({})".format(
                size, self.max_size, self._settings.peer), LOCAL))
            return
        mail = [b"MAIL FROM:<", sender, b">"]
        if "SIZE" in ext:
            mail.append(b" SIZE=%d" % size)
        if "8BITMIME" in ext and not txn.ascii:
            mail.append(b" BODY=8BITMIME")
        if utf8 and not (txn.mail_from.isascii()
                         and all(r.isascii() for r, _ in recipients)):
            mail.append(b" SMTPUTF8")
        if self._need_rset:
            self._need_rset = False
            self._command(b"RSET", self._on_rset)
        self._envelope = txn
        txn.rcpts_pending = len(recipients)
        if self.pipelining and not self._unsent:
            # The whole envelope in one piece (RFC 2920: DATA ends the group).
            mail.append(b"\r\n")
            expect = self._expect
            expect.append(partial(self._on_mail, txn))
            for rcpt, encoded in recipients:
                mail += (b"RCPT TO:<", encoded, b">\r\n")
                expect.append(partial(self._on_rcpt, txn, rcpt))
            mail.append(b"DATA\r\n")
            expect.append(partial(self._on_data, txn))
            self._out.append(b"".join(mail))
            return
        self._command(b"".join(mail), partial(self._on_mail, txn), txn)
        for rcpt, encoded in recipients:
            self._command(b"RCPT TO:<" + encoded + b">", partial(self._on_rcpt, txn, rcpt), txn)
        self._command(b"DATA", partial(self._on_data, txn), txn)

    def _bad_address_reply(self, address: str, status: str, utf8: bool) -> Reply:
        code, text = bad_address_text(address, status, utf8, self._settings.peer)
        return Reply(code, text, LOCAL)

    def _reply_result(self, code: int, lines: list[bytes], stage: str) -> Reply:
        text = reply_text(lines)
        if code == 503:
            # "Bad sequence of commands" says our session is confused, not
            # that the address is bad: never record it as a permanent failure.
            return Reply(451, "4.5.0 {} reported a command sequence error: 503 {}".format(
                self._settings.peer, text), SESSION)
        return Reply(code, text, stage)

    def _on_rset(self, code: int, lines: list[bytes]) -> None:
        if code // 100 != 2:
            log.warn("{peer} refused RSET ({code}); closing the connection",
                     peer=self._settings.peer, code=code)
            self._retiring = True

    def _abandon(self, txn: Transaction) -> None:
        """
        Lock-step only: stop sending the envelope of a failed transaction.
        """
        self._unsent = deque(item for item in self._unsent if item[2] is not txn)
        self._envelope = None
        self._need_rset = True
        txn.finish(NO_REPLY)
        self.take_work()

    def _on_mail(self, txn: Transaction, code: int, lines: list[bytes]) -> None:
        if code == 421:
            # The session is closing (often an idle timeout that crossed our
            # command): nothing about this message, so connectionLost may
            # hand it to another connection.
            return
        if code // 100 != 2:
            txn.mail_reply = self._reply_result(code, lines, MAIL)
            if not self.pipelining:
                self._abandon(txn)

    def _on_rcpt(self, txn: Transaction, rcpt: str, code: int, lines: list[bytes]) -> None:
        txn.rcpts_pending -= 1
        if txn.mail_reply is not None or code == 421:
            return
        if code // 100 == 2:
            txn.accepted.append(rcpt)
        else:
            txn.results[rcpt] = self._reply_result(code, lines, RCPT)
            txn.refused = True
        if not self.pipelining and txn.rcpts_pending == 0 and not txn.accepted:
            self._abandon(txn)

    def _on_data(self, txn: Transaction, code: int, lines: list[bytes]) -> None:
        self._envelope = None
        if code == 354:
            self._in_data = txn
            if txn.accepted and txn.mail_reply is None:
                txn.data_sent = True
                for chunk in txn.chunks:
                    self._write(chunk)
            else:
                # The server wants content although nobody will get it
                # (RFC 2920 3.1): end it at once.
                self._write(b".\r\n")
                txn.finish(NO_RECIPIENTS)
            self._expect.append(partial(self._on_end_of_data, txn))
            # Pipelining: the next envelope rides in the same write.
            self.take_work()
            return
        if txn.mail_reply is None:
            result = self._reply_result(code, lines, DATA)
            for rcpt in txn.accepted:
                txn.results[rcpt] = result
        self._need_rset = True
        txn.finish(NO_REPLY)
        self.take_work()

    def _on_end_of_data(self, txn: Transaction, code: int, lines: list[bytes]) -> None:
        self._in_data = None
        if not txn.done:
            result = Reply(code, reply_text(lines), DATA)
            for rcpt in txn.accepted:
                txn.results[rcpt] = result
            txn.finish(NO_REPLY)
        self.take_work()
