"""The HTTP listener: uvicorn with its C parser (httptools), plus the limits a public port needs.

uvicorn closes idle keep-alive connections, but a client that sends its request headers (or
its body) a byte at a time keeps a connection, and its memory, as long as it likes. Here each
request must finish its headers within `serving.header_timeout_s` of the connection opening
(or of its previous response), and its body within `serving.body_timeout_s` of its headers;
otherwise the connection is closed. The body's size is bounded by the app (`app._body_bytes`).
Timers, not a task per request: the request path stays as cheap as before.
"""

from __future__ import annotations

import asyncio

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streamrec.config import ServingConfig


def guarded_protocol(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """httptools' protocol that closes a connection whose request is not in on time."""

    class TimedRequestProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout_s)

        def on_headers_complete(self) -> None:
            self._arm(body_timeout_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(header_timeout_s)  # the next request on this connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedRequestProtocol


def server_config(app: Starlette, host: str, port: int, settings: ServingConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings.header_timeout_s, settings.body_timeout_s),
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        log_level="warning",
        access_log=False,
    )
