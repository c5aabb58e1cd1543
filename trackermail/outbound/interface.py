# -*- test-case-name: tests.outbound.test_contract -*-
"""
How trackermail hands finished mail to the next hop.

The outbox sender does not speak SMTP itself: it gives each delivery to an
L{IOutboundTransport} and records what came back. The real one is
L{trackermail.outbound.pool.SMTPPool}; tests use
C{tests.support.outbound.MemoryOutboundTransport}. Both pass the contract
tests in C{tests.outbound.test_contract}.
"""

from __future__ import annotations

from typing import NamedTuple

from zope.interface import Interface

# Where a reply came from. The sender decides by it whether a refusal is
# about the recipient (only RCPT), the message (DATA), or the smarthost.
CONNECT = "connect"  # the session could not be set up: connect, greeting, EHLO, STARTTLS, AUTH
MAIL = "mail"  # the reply to MAIL FROM
RCPT = "rcpt"  # the reply to this recipient's RCPT TO
DATA = "data"  # the reply to DATA, or to the end of the content
SESSION = "session"  # the session broke during the transaction (lost, timeout, 421, confusion)
LOCAL = "local"  # decided here without asking the server (shutting down, over SIZE, bad syntax)

STAGES = (CONNECT, MAIL, RCPT, DATA, SESSION, LOCAL)


class Reply(NamedTuple):
    """
    What became of one recipient: the SMTP code, the reply text (starting
    with the enhanced status code when the server gave one, e.g.
    C{"2.0.0 Ok: queued as X"}) and the L{stage} it came from.
    """

    code: int
    text: str
    stage: str


class IOutboundTransport(Interface):
    """
    Sends messages to a relay and reports the reply for every recipient.
    """

    def send(mail_from, recipients, data):
        """
        Send one message.

        @param mail_from: the envelope sender (C{str}); C{""} is the null
            sender C{<>}.
        @param recipients: a sequence of envelope recipients (C{str}).
        @param data: the message as C{bytes}, header and body, sent verbatim
            apart from line endings (made CRLF) and dot-stuffing; or a
            sequence of C{bytes} parts sent one after the other, each
            starting at a line boundary (a copy's header prefix, then the
            chunks of the body shared by a whole fan-out, which are then
            encoded once for all copies).

        @return: a C{Deferred} firing with C{dict[str, Reply]}: recipient ->
            L{Reply} for every distinct recipient. It never errbacks for
            SMTP-level or connection failures:
              - the session could not be set up: every recipient gets a 4xx
                with stage L{CONNECT};
              - a session lost or timed out during the transaction: a 4xx
                with stage L{SESSION};
              - a message over the relay's advertised SIZE: 552
                C{"5.3.4 ..."} with stage L{LOCAL};
              - a rejected MAIL FROM: that reply for every recipient, stage
                L{MAIL};
              - a recipient the relay refused keeps its own RCPT reply,
                stage L{RCPT};
              - a rejected DATA or content: that reply for every accepted
                recipient, stage L{DATA}.
            2xx means the relay took responsibility, 4xx means try again
            later, 5xx means it will never work.
        """

    def close():
        """
        Stop sending: sends that have not started get a 4xx (stage
        L{LOCAL}), sends in progress finish, then every connection says QUIT.

        @return: a C{Deferred} that fires when every connection is closed.
        """
