"""The HTTP listener: uvicorn with its C parser (httptools), plus the limits a public port needs.

uvicorn closes idle keep-alive connections, but a client that sends its request headers a
byte at a time keeps a connection (and its memory) as long as it likes. Each connection here
must finish its headers within `serving.header_timeout_s` of opening (or of its previous
response); the body is bounded in size and time by the app (`app._body_bytes`).
"""

from __future__ import annotations

import asyncio

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streamrec.config import ServingConfig


def guarded_protocol(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """httptools' protocol that closes a connection whose headers are not in on time."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same time

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def server_config(app: Starlette, host: str, port: int, settings: ServingConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings.header_timeout_s),
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        log_level="warning",
        access_log=False,
    )
