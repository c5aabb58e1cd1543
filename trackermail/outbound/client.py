# -*- test-case-name: tests.outbound.test_client -*-
"""
One persistent SMTP client connection to the smarthost.

Written on L{Protocol} rather than on Twisted's C{ESMTPClient}, which sends
one command at a time, turns CRLF into CR CR LF and dot-stuffs per 16 KiB
chunk (see TWISTED-NOTES (b)). This client:

  - speaks RFC 2920 PIPELINING when the server offers it: MAIL, every RCPT
    and DATA go out in one write, and after a message's final "." the next
    transaction's MAIL/RCPT/DATA follow in the same write; without it, it
    runs lock-step;
  - runs many transactions per session and sends RSET after one that did
    not end with the end-of-data reply;
  - sends C{SIZE=} and C{BODY=8BITMIME} when offered, and refuses a message
    over the advertised SIZE with a permanent 552;
  - normalises line endings to CRLF once and dot-stuffs the whole message
    at once, so there are no chunk boundaries to get wrong;
  - does STARTTLS with whatever client TLS options it is given (the pool
    uses C{optionsForClientTLS}, so the certificate is checked by
    service_identity) and authenticates (PLAIN, LOGIN) only over TLS;
  - never errbacks a transaction: every recipient gets a (code, text).

The connection does not own a queue: it asks its I{source} (the pool) for
the next L{Transaction} whenever it can take one.
"""

from __future__ import annotations

import base64
import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional, Sequence
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

log = Logger()

Result = tuple[int, str]

# Replies longer than this without a line end are not SMTP (RFC 5321 allows
# 512 octets per reply line).
MAX_REPLY_BUFFER = 65536

_BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")


def _encode_part(data: bytes) -> bytes:
    """
    One part of a message as DATA content, without the final "." line:
    every line ending (CRLF, LF or a bare CR, which SMTP does not allow)
    becomes CRLF, lines starting with "." get another ".", and the part ends
    with CRLF. A part always starts at the beginning of a line.
    """
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\r") or crlf != data.count(b"\n"):
        if crlf or b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        data = data.replace(b"\n", b"\r\n")
    if data[:1] == b".":
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


# Encoded large parts by identity: a fan-out hands the same stored body
# object to every recipient (with a per-recipient header prefix in front),
# so a 1 MiB body is encoded once, not once per copy. Each entry keeps its
# source alive, so an id cannot be reused while it is cached.
_CACHE_MIN = 4096
_CACHE_ENTRIES = 8
_cache: "OrderedDict[int, tuple[bytes, bytes, bool]]" = OrderedDict()


def _encoded_part(part: bytes) -> tuple[bytes, bool]:
    if len(part) < _CACHE_MIN:
        encoded = _encode_part(part)
        return encoded, encoded.isascii()
    hit = _cache.get(id(part))
    if hit is not None and hit[0] is part:
        _cache.move_to_end(id(part))
        return hit[1], hit[2]
    encoded = _encode_part(part)
    ascii_only = encoded.isascii()
    _cache[id(part)] = (part, encoded, ascii_only)
    while len(_cache) > _CACHE_ENTRIES:
        _cache.popitem(last=False)
    return encoded, ascii_only


def encode_chunks(data) -> tuple[list[bytes], int, bool]:
    """
    DATA content of C{data} (bytes, or a sequence of parts each starting at
    a line boundary, e.g. header prefix + shared body) as a list of chunks
    ending with the "." line, the content size (without it), and whether
    it is all ASCII. Dot-stuffing is done on whole parts, so it holds
    wherever the transport later splits the bytes.
    """
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    chunks = []
    size = 0
    ascii_only = True
    for part in parts:
        if not part:
            continue
        encoded, is_ascii = _encoded_part(bytes(part) if not isinstance(part, bytes) else part)
        chunks.append(encoded)
        size += len(encoded)
        ascii_only = ascii_only and is_ascii
    chunks.append(b".\r\n")
    return chunks, size, ascii_only


def encode_data(data) -> bytes:
    """
    C{data} as DATA content ending with CRLF "." CRLF, in one piece.
    """
    return b"".join(encode_chunks(data)[0])


def _can_write_directly(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP client transport whose socket we may
    write to when its own buffer is empty (see L{SMTPConnection._flush}).
    """
    from twisted.internet import tcp

    return (type(transport) is tcp.Client
            and all(hasattr(transport, name) for name in (
                "writeSomeData", "dataBuffer", "offset", "_tempDataBuffer"))
            and not getattr(transport, "TLS", False))


def _text(lines: Sequence[bytes]) -> str:
    return " ".join(line.decode("utf-8", "replace") for line in lines).strip()


class Transaction:
    """
    One message for one set of recipients, and what became of it.

    C{deferred} fires with recipient -> (code, text) for every recipient.
    """

    __slots__ = (
        "mail_from", "recipients", "data", "deferred", "results", "accepted",
        "mail_reply", "data_sent", "rcpts_pending", "requeued", "done", "refused",
        "_chunks", "_size", "_ascii",
    )

    def __init__(self, mail_from: str, recipients: Sequence[str], data):
        self.mail_from = mail_from
        # A recipient listed twice gets one copy and one result.
        self.recipients = list(dict.fromkeys(recipients))
        self.data = data
        self.deferred: Deferred = Deferred()
        self.requeued = 0
        self.done = False
        self._chunks: Optional[list[bytes]] = None
        self._size = 0
        self._ascii = True
        self.reset()

    def reset(self) -> None:
        """
        Forget the outcome of an attempt that never reached DATA content.
        """
        self.results: dict[str, Result] = {}
        self.accepted: list[str] = []
        self.mail_reply: Optional[Result] = None
        self.data_sent = False
        self.refused = False
        self.rcpts_pending = 0

    def _encode(self) -> None:
        if self._chunks is None:
            self._chunks, self._size, self._ascii = encode_chunks(self.data)

    @property
    def chunks(self) -> list[bytes]:
        """The DATA content, "." line included, as chunks to write in order."""
        self._encode()
        return self._chunks

    @property
    def size(self) -> int:
        """The content size in octets (for SIZE=), without the "." line."""
        self._encode()
        return self._size

    @property
    def ascii(self) -> bool:
        self._encode()
        return self._ascii

    def finish(self, fallback: Result) -> None:
        """
        Fire the Deferred. Recipients without their own reply get the MAIL
        reply if MAIL failed, else C{fallback}.
        """
        if self.done:
            return
        self.done = True
        default = self.mail_reply or fallback
        results = self.results
        final = {r: results.get(r, default) for r in self.recipients}
        self.deferred.callback(final)

    def fail_all(self, result: Result) -> None:
        self.results = {}
        self.mail_reply = None
        self.finish(result)


class TransactionSource(TypingProtocol):
    """
    What a connection needs from its owner (the pool).
    """

    def next_transaction(self, conn: "SMTPConnection") -> Optional[Transaction]:
        ...

    def connection_ready(self, conn: "SMTPConnection") -> None:
        ...

    def connection_failed(self, conn: "SMTPConnection", result: Result) -> None:
        ...

    def connection_closed(self, conn: "SMTPConnection",
                          requeue: list[Transaction]) -> None:
        ...


@dataclass(frozen=True)
class ClientSettings:
    """
    How a connection behaves; built once by the pool.

    C{tls_options} is an C{IOpenSSLClientConnectionCreator} (from
    C{optionsForClientTLS}); C{starttls} is C{no}, C{opportunistic} or
    C{required}. C{peer} names the smarthost in logs and reply texts.
    """

    helo: str
    starttls: str = "no"
    tls_options: Any = None
    username: str = ""
    password: str = ""
    timeout: float = 120.0
    idle_timeout: float = 60.0
    max_transactions: int = 0
    peer: str = "smarthost"


_SETUP = "setup"
_READY = "ready"
_CLOSING = "closing"
_CLOSED = "closed"


class SMTPConnection(Protocol):
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
        self._setup_failure: Optional[Result] = None
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
        self._direct = _can_write_directly(self.transport)
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
                    self._settings.peer, _text(lines))
                self._close_now()
            else:
                self._protocol_error("unexpected reply {} {}".format(code, _text(lines)))
            return
        self._expect.popleft()(code, lines)
        if code == 421 and self.state != _CLOSED:
            # The server is going away (RFC 5321 3.8): whatever else is in
            # flight gets a 4xx from connectionLost.
            self._lost_reason = "4.4.2 {} closed the session: 421 {}".format(
                self._settings.peer, _text(lines))
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
                data = b"".join(out) if len(out) > 1 else out[0]
                if (self._direct and not t._tempDataBuffer and len(t.dataBuffer) <= t.offset
                        and t.connected and not t.disconnecting):
                    # Twisted's write() only buffers and registers for
                    # writability: two epoll_ctl calls and a reactor turn
                    # per write, about a fifth of the CPU per delivery. With
                    # nothing buffered, send now (as asyncio's transports
                    # do); whatever the socket does not take is buffered.
                    sent = t.writeSomeData(data)
                    if isinstance(sent, int) and sent > 0:
                        data = data[sent:]
                if data:
                    t.write(data)
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
            self._setup_failure = (421, self._lost_reason)
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
                    failure = (421, "4.7.0 TLS with {} failed: {}".format(
                        self._settings.peer, why))
                    log.error("TLS with {peer} failed: {why}",
                              peer=self._settings.peer, why=why)
                else:
                    failure = (421, "4.4.2 connection to {} lost before it was"
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
                txn.finish((421, lost))
        self._in_data = self._envelope = None
        self._source.connection_closed(self, requeue)

    # -- session setup ----------------------------------------------------

    def _fail_setup(self, result: Result, quit: bool = True) -> None:
        self._setup_failure = result
        if quit:
            self._write(b"QUIT\r\n")
            self._expect.append(self._ignore_reply)
            self._flush()
        self.transport.loseConnection()

    def _ignore_reply(self, code: int, lines: list[bytes]) -> None:
        pass

    def _on_greeting(self, code: int, lines: list[bytes]) -> None:
        if code != 220:
            log.warn("{peer} refused the session: {code} {text}",
                     peer=self._settings.peer, code=code, text=_text(lines))
            self._fail_setup((421, "4.4.2 {} refused the session: {} {}".format(
                self._settings.peer, code, _text(lines))), quit=code != 421)
            return
        self._ehlo()

    def _ehlo(self) -> None:
        self._command(b"EHLO " + self._settings.helo.encode("ascii"), self._on_ehlo)

    def _on_ehlo(self, code: int, lines: list[bytes]) -> None:
        if code == 250:
            self._parse_extensions(lines[1:])
            self._after_ehlo()
        elif 500 <= code < 600 and code != 554 and not self.tls:
            self._command(b"HELO " + self._settings.helo.encode("ascii"), self._on_helo)
        else:
            self._fail_setup((421, "4.4.2 {} refused EHLO: {} {}".format(
                self._settings.peer, code, _text(lines))), quit=code != 421)

    def _on_helo(self, code: int, lines: list[bytes]) -> None:
        if code == 250:
            self.extensions = {}
            self._after_ehlo()
        else:
            self._fail_setup((421, "4.4.2 {} refused HELO: {} {}".format(
                self._settings.peer, code, _text(lines))), quit=code != 421)

    def _parse_extensions(self, lines: list[bytes]) -> None:
        ext: dict[str, list[str]] = {}
        for raw in lines:
            words = raw.decode("ascii", "replace").split()
            if not words:
                continue
            keyword = words[0].upper()
            params = words[1:]
            if keyword.startswith("AUTH="):
                # Pre-RFC 4954 servers: "AUTH=LOGIN PLAIN".
                params = [keyword[5:]] + params
                keyword = "AUTH"
            ext.setdefault(keyword, []).extend(params)
        self.extensions = ext
        self.pipelining = "PIPELINING" in ext
        self.max_size = 0
        size = ext.get("SIZE")
        if size:
            try:
                self.max_size = max(0, int(size[0]))
            except ValueError:
                pass

    def _after_ehlo(self) -> None:
        settings = self._settings
        if settings.starttls != "no" and not self.tls and not self._starttls_refused:
            if "STARTTLS" in self.extensions:
                if not ITLSTransport.providedBy(self.transport):
                    self._tls_unavailable("the transport cannot start TLS")
                    return
                self._command(b"STARTTLS", self._on_starttls)
                return
            if settings.starttls == "required":
                self._tls_unavailable("it does not offer STARTTLS")
                return
            log.info("{peer} does not offer STARTTLS; sending in clear",
                     peer=settings.peer)
        if settings.username:
            if not self.tls:
                log.error("not authenticating to {peer}: refusing to send "
                          "credentials over an unencrypted connection",
                          peer=settings.peer)
                self._fail_setup((421, "4.7.0 {}: refusing to authenticate over"
                                       " an unencrypted connection".format(settings.peer)))
                return
            mechanisms = [m.upper() for m in self.extensions.get("AUTH", [])]
            user = settings.username.encode("utf-8")
            password = settings.password.encode("utf-8")
            if "PLAIN" in mechanisms:
                token = base64.b64encode(b"\0" + user + b"\0" + password)
                self._command(b"AUTH PLAIN " + token, self._on_auth)
            elif "LOGIN" in mechanisms:
                self._command(b"AUTH LOGIN", partial(self._on_auth_login, [user, password]))
            else:
                log.error("{peer} offers no AUTH PLAIN or LOGIN", peer=settings.peer)
                self._fail_setup((421, "4.7.0 {} offers no AUTH PLAIN or LOGIN".format(
                    settings.peer)))
            return
        self._ready()

    def _tls_unavailable(self, why: str) -> None:
        log.error("refusing to send to {peer} in clear (starttls = required): {why}",
                  peer=self._settings.peer, why=why)
        self._fail_setup((421, "4.7.0 {}: TLS required but {}; refusing to send in"
                               " clear".format(self._settings.peer, why)))

    def _on_starttls(self, code: int, lines: list[bytes]) -> None:
        if code != 220:
            if self._settings.starttls == "required" or code == 421:
                self._tls_unavailable("STARTTLS was answered {} {}".format(
                    code, _text(lines)))
                return
            log.warn("{peer} refused STARTTLS ({code} {text}); sending in clear",
                     peer=self._settings.peer, code=code, text=_text(lines))
            self._starttls_refused = True
            self._after_ehlo()
            return
        self._drop_input = True
        self._buffer = b""
        # From now on every byte must go through the TLS layer.
        self._direct = False
        self.transport.startTLS(self._settings.tls_options)
        self.tls = True
        # RFC 3207 4.2: forget everything learnt before TLS.
        self.extensions = {}
        self.pipelining = False
        self._ehlo()

    def _on_auth(self, code: int, lines: list[bytes]) -> None:
        if code == 235:
            self._ready()
            return
        log.error("{peer} rejected our credentials: {code} {text}",
                  peer=self._settings.peer, code=code, text=_text(lines))
        self._fail_setup((421, "4.7.0 {} rejected our credentials: {} {}".format(
            self._settings.peer, code, _text(lines))), quit=code != 421)

    def _on_auth_login(self, answers: list[bytes], code: int, lines: list[bytes]) -> None:
        if code == 334 and answers:
            self._command(base64.b64encode(answers[0]),
                          partial(self._on_auth_login, answers[1:]))
            return
        self._on_auth(code, lines)

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
            self._setup_failure = (421, "4.3.2 shutting down")
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

    def _address(self, address: str, utf8: bool) -> Optional[bytes]:
        if _BAD_ADDRESS.search(address):
            return None
        if not address.isascii() and not utf8:
            return None
        return address.encode("utf-8")

    def _start(self, txn: Transaction) -> None:
        self.transactions += 1
        ext = self.extensions
        utf8 = "SMTPUTF8" in ext
        sender = self._address(txn.mail_from, utf8)
        if sender is None:
            txn.fail_all(self._bad_address_reply(txn.mail_from, "5.1.7", utf8))
            return
        recipients = []
        for rcpt in txn.recipients:
            encoded = self._address(rcpt, utf8)
            if encoded is None:
                txn.results[rcpt] = self._bad_address_reply(rcpt, "5.1.3", utf8)
            else:
                recipients.append((rcpt, encoded))
        if not recipients:
            txn.finish((554, "5.5.1 no valid recipients"))
            return
        size = txn.size
        if self.max_size and size > self.max_size:
            txn.fail_all((552, "5.3.4 message size {} exceeds the limit of {} ({})".format(
                size, self.max_size, self._settings.peer)))
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

    def _bad_address_reply(self, address: str, status: str, utf8: bool) -> Result:
        if not _BAD_ADDRESS.search(address) and not address.isascii() and not utf8:
            return (553, "5.6.7 non-ASCII address and {} does not offer SMTPUTF8".format(
                self._settings.peer))
        return (501, "{} bad address syntax".format(status))

    def _reply_result(self, code: int, lines: list[bytes]) -> Result:
        text = _text(lines)
        if code == 503:
            # "Bad sequence of commands" says our session is confused, not
            # that the address is bad: never record it as a permanent failure.
            return (451, "4.5.0 {} reported a command sequence error: 503 {}".format(
                self._settings.peer, text))
        return (code, text)

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
        txn.finish((451, "4.3.0 no reply"))
        self.take_work()

    def _on_mail(self, txn: Transaction, code: int, lines: list[bytes]) -> None:
        if code == 421:
            # The session is closing (often an idle timeout that crossed our
            # command): nothing about this message, so connectionLost may
            # hand it to another connection.
            return
        if code // 100 != 2:
            txn.mail_reply = self._reply_result(code, lines)
            if not self.pipelining:
                self._abandon(txn)

    def _on_rcpt(self, txn: Transaction, rcpt: str, code: int, lines: list[bytes]) -> None:
        txn.rcpts_pending -= 1
        if txn.mail_reply is not None or code == 421:
            return
        if code // 100 == 2:
            txn.accepted.append(rcpt)
        else:
            txn.results[rcpt] = self._reply_result(code, lines)
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
                txn.finish((554, "5.5.1 no valid recipients"))
            self._expect.append(partial(self._on_end_of_data, txn))
            # Pipelining: the next envelope rides in the same write.
            self.take_work()
            return
        if txn.mail_reply is None:
            result = self._reply_result(code, lines)
            for rcpt in txn.accepted:
                txn.results[rcpt] = result
        self._need_rset = True
        txn.finish((451, "4.3.0 no reply"))
        self.take_work()

    def _on_end_of_data(self, txn: Transaction, code: int, lines: list[bytes]) -> None:
        self._in_data = None
        if not txn.done:
            result = (code, _text(lines))
            for rcpt in txn.accepted:
                txn.results[rcpt] = result
            txn.finish((451, "4.3.0 no reply"))
        self.take_work()
