# -*- test-case-name: tests.outbound.test_pool -*-
"""
How trackermail hands finished mail to the next hop.

The outbox sender does not speak SMTP itself: it gives each delivery to an
L{IOutboundTransport} and records what came back. The real one is
L{trackermail.outbound.pool.SMTPPool}; tests use
C{tests.support.outbound.MemoryOutboundTransport}.
"""

from __future__ import annotations

from zope.interface import Interface

# A result is (SMTP code, reply text); the text starts with the enhanced
# status code when the server gave one, e.g. (250, "2.0.0 Ok: queued as X").


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
            body shared by a whole fan-out, which is then encoded once).

        @return: a C{Deferred} firing with C{dict[str, tuple[int, str]]}:
            recipient -> (SMTP code, text) for every distinct recipient. It
            never errbacks for SMTP-level or connection failures:
              - a connection failure or timeout gives every recipient a 4xx
                (421, C{"4.4.2 ..."});
              - a message over the relay's advertised SIZE gives every
                recipient 552 C{"5.3.4 ..."} (permanent);
              - a rejected MAIL FROM or DATA gives that reply to every
                recipient;
              - a recipient the relay refused keeps its own RCPT reply.
            2xx means the relay took responsibility, 4xx means try again
            later, 5xx means it will never work.
        """

    def close():
        """
        Stop sending: sends that have not started get a 4xx, sends in progress
        finish, then every connection says QUIT.

        @return: a C{Deferred} that fires when every connection is closed.
        """
