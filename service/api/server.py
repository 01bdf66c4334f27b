"""uvicorn's HTTP protocol with a deadline for reading each request.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` seconds, but a client
that connects and then sends its headers (or its body) a byte at a time is never timed out: 200
such connections stayed open for as long as their senders liked. :class:`DeadlineHttpTools`
gives every request a deadline: from the moment the connection opens, or the previous response
ends, the whole request (headers and body) must have arrived within ``request_timeout`` seconds,
else the server answers 408 and closes the connection. Time the app spends answering does not
count (the deadline stops when the request is complete).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_BODY = b"request not received in time"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


def protocol_with_deadline(request_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with this deadline (seconds)."""

    class DeadlineHttpTools(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

    return DeadlineHttpTools
