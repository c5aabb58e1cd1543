# -*- test-case-name: tests.outbound.test_connection -*-
"""
Writing to a TCP socket at once instead of through Twisted's write buffer.

Twisted's C{write()} only buffers and registers for writability: two
C{epoll_ctl} calls and a reactor turn per write, about a fifth of the CPU
per delivery. When nothing is buffered we send at once (as asyncio's
transports do) and hand Twisted whatever the socket did not take.

This is the one place that knows private attributes of Twisted's
C{tcp.Client} (C{dataBuffer}, C{offset}, C{_tempDataBuffer},
C{writeSomeData}); anything else gets plain C{write()}.
"""

from __future__ import annotations

from typing import Any

_PRIVATE = ("writeSomeData", "dataBuffer", "offset", "_tempDataBuffer")


def can_write_directly(transport: Any) -> bool:
    """
    Whether C{transport} is a plain (not TLS) TCP client transport whose
    socket L{write} may use directly.
    """
    from twisted.internet import tcp

    return (type(transport) is tcp.Client
            and all(hasattr(transport, name) for name in _PRIVATE)
            and not getattr(transport, "TLS", False))


def write(transport: Any, data: bytes, direct: bool) -> None:
    """
    Write C{data}: straight to the socket when C{direct} (see
    L{can_write_directly}) and Twisted has nothing buffered, else through
    C{transport.write}.
    """
    t = transport
    if (direct and not t._tempDataBuffer and len(t.dataBuffer) <= t.offset
            and t.connected and not t.disconnecting):
        sent = t.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            data = data[sent:]
    if data:
        t.write(data)
