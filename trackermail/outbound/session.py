# -*- test-case-name: tests.outbound.test_connection -*-
"""
Setting up an SMTP client session: greeting, EHLO (or HELO), STARTTLS and
AUTH, up to the point where the connection can run transactions.

A refusal at any of these steps fails the whole session with a 4xx of stage
L{CONNECT}: the pool hands it to the sends that were waiting, and the outbox
sender takes it as the smarthost's problem, never a recipient's.

STARTTLS uses whatever client TLS options it is given (the pool uses
C{optionsForClientTLS}, so the certificate is checked by service_identity);
AUTH (PLAIN, LOGIN) happens only over TLS.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger

from trackermail.outbound.interface import CONNECT, Reply
from trackermail.outbound.wire import reply_text

log = Logger()


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


def setup_failure(text: str) -> Reply:
    return Reply(421, text, CONNECT)


class SessionSetup:
    """
    The setup half of L{trackermail.outbound.connection.SMTPConnection}: it
    relies on the connection's C{_command}, C{_write}, C{_flush},
    C{_expect}, C{_settings}, C{transport} and calls C{_ready} at the end.
    """

    _settings: ClientSettings
    transport: Any

    def _fail_setup(self, result: Reply, quit: bool = True) -> None:
        self._setup_failure = result
        if quit:
            self._write(b"QUIT\r\n")
            self._expect.append(self._ignore_reply)
            self._flush()
        self.transport.loseConnection()

    def _ignore_reply(self, code: int, lines: list[bytes]) -> None:
        pass

    def _refused(self, what: str, code: int, lines: list[bytes]) -> None:
        self._fail_setup(setup_failure("4.4.2 {} refused {}: {} {}".format(
            self._settings.peer, what, code, reply_text(lines))), quit=code != 421)

    def _on_greeting(self, code: int, lines: list[bytes]) -> None:
        if code != 220:
            log.warn("{peer} refused the session: {code} {text}",
                     peer=self._settings.peer, code=code, text=reply_text(lines))
            self._refused("the session", code, lines)
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
            self._refused("EHLO", code, lines)

    def _on_helo(self, code: int, lines: list[bytes]) -> None:
        if code == 250:
            self.extensions = {}
            self._after_ehlo()
        else:
            self._refused("HELO", code, lines)

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
            self._authenticate()
            return
        self._ready()

    def _authenticate(self) -> None:
        settings = self._settings
        if not self.tls:
            log.error("not authenticating to {peer}: refusing to send "
                      "credentials over an unencrypted connection",
                      peer=settings.peer)
            self._fail_setup(setup_failure("4.7.0 {}: refusing to authenticate over"
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
            self._fail_setup(setup_failure("4.7.0 {} offers no AUTH PLAIN or LOGIN".format(
                settings.peer)))

    def _tls_unavailable(self, why: str) -> None:
        log.error("refusing to send to {peer} in clear (starttls = required): {why}",
                  peer=self._settings.peer, why=why)
        self._fail_setup(setup_failure("4.7.0 {}: TLS required but {}; refusing to send in"
                                       " clear".format(self._settings.peer, why)))

    def _on_starttls(self, code: int, lines: list[bytes]) -> None:
        if code != 220:
            if self._settings.starttls == "required" or code == 421:
                self._tls_unavailable("STARTTLS was answered {} {}".format(
                    code, reply_text(lines)))
                return
            log.warn("{peer} refused STARTTLS ({code} {text}); sending in clear",
                     peer=self._settings.peer, code=code, text=reply_text(lines))
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
                  peer=self._settings.peer, code=code, text=reply_text(lines))
        self._fail_setup(setup_failure("4.7.0 {} rejected our credentials: {} {}".format(
            self._settings.peer, code, reply_text(lines))), quit=code != 421)

    def _on_auth_login(self, answers: list[bytes], code: int, lines: list[bytes]) -> None:
        if code == 334 and answers:
            self._command(base64.b64encode(answers[0]),
                          partial(self._on_auth_login, answers[1:]))
            return
        self._on_auth(code, lines)
