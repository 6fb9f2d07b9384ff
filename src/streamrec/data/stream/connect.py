"""Open a stream by its address: the one place that maps `StreamAddress` kinds to backends.

`online --source/--actions` read through `open_source`, `stream produce --to` writes through
`open_sink`. `settings` are the config's `online.source` client settings: librdkafka names for
Kafka (e.g. {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", ...}), redis-py
`Redis(...)` keywords for Redis (e.g. {"password": ...}); a local log takes none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from streamrec.data.stream.address import StreamAddress, parse_stream_address
from streamrec.data.stream.base import StreamSink, StreamSource, StreamUnavailable
from streamrec.data.stream.local_log import LocalLog, LocalLogSource

T = TypeVar("T")
DEFAULT_SERVICE_TIMEOUT = 30.0  # seconds a command waits for Kafka / Redis before giving up


def _within(timeout: float, connect: Callable[[], T]) -> T:
    """`connect()`, retried with a capped backoff while the service is unavailable, for at
    most `timeout` seconds; then its StreamUnavailable, saying how long it was tried."""
    started, wait = time.monotonic(), 0.2
    while True:
        try:
            return connect()
        except StreamUnavailable as e:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise StreamUnavailable(f"{e} (no answer for {timeout:g} s)") from None
            time.sleep(min(wait, left))
            wait = min(2 * wait, 5.0)


def _address(where: str | Path | StreamAddress) -> StreamAddress:
    return where if isinstance(where, StreamAddress) else parse_stream_address(where)


def _no_settings(address: StreamAddress, settings: dict[str, Any] | None) -> None:
    if settings:
        raise ValueError(
            f"{address}: a local log takes no client settings (online.source has "
            f"{sorted(settings)})"
        )


def open_source(
    where: str | Path | StreamAddress,
    group: str = "default",
    settings: dict[str, Any] | None = None,
    on_gap: str = "fail",
    timeout: float = DEFAULT_SERVICE_TIMEOUT,
) -> StreamSource:
    """The consumer side of `where`, positioned at `group`'s committed offsets. `on_gap`:
    what messages the broker deleted before they were read do (Kafka; `online.on_gap`);
    `timeout`: how long an unavailable service is waited for (then StreamUnavailable)."""
    address = _address(where)
    if address.kind == "kafka":
        from streamrec.data.stream.kafka import KafkaSource

        return _within(timeout, lambda: KafkaSource(
            address.servers, address.name, group, settings, on_gap=on_gap,
            request_seconds=min(10.0, timeout),
        ))
    if address.kind == "redis":
        from streamrec.data.stream.redis_stream import RedisStreamSource

        return _within(timeout, lambda: RedisStreamSource(
            address.redis_url, address.name, group, settings=settings
        ))
    _no_settings(address, settings)
    assert address.path is not None
    return LocalLogSource(address.path, group)


def open_sink(
    where: str | Path | StreamAddress,
    settings: dict[str, Any] | None = None,
    timeout: float = DEFAULT_SERVICE_TIMEOUT,
) -> StreamSink:
    """The producer side of `where` (a local log folder is created if missing). A service
    that does not answer within `timeout` seconds — at the start or for a message — is
    StreamUnavailable."""
    address = _address(where)
    if address.kind == "kafka":
        from streamrec.data.stream.kafka import KafkaSink

        return KafkaSink(address.servers, address.name, settings, timeout)
    if address.kind == "redis":
        from streamrec.data.stream.redis_stream import RedisStreamSink

        return _within(timeout, lambda: RedisStreamSink(address.redis_url, address.name, settings))
    _no_settings(address, settings)
    assert address.path is not None
    return LocalLog(address.path)
