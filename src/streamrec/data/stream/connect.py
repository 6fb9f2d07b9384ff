"""Open a stream by its address: the one place that maps `StreamAddress` kinds to backends.

`online --source/--actions` read through `open_source`, `stream produce --to` writes through
`open_sink`. `settings` are the config's `online.source` client settings: librdkafka names for
Kafka (e.g. {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", ...}), redis-py
`Redis(...)` keywords for Redis (e.g. {"password": ...}); a local log takes none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamrec.data.stream.address import StreamAddress, parse_stream_address
from streamrec.data.stream.base import StreamSink, StreamSource
from streamrec.data.stream.local_log import LocalLog, LocalLogSource


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
) -> StreamSource:
    """The consumer side of `where`, positioned at `group`'s committed offsets. `on_gap`:
    what messages the broker deleted before they were read do (Kafka; `online.on_gap`)."""
    address = _address(where)
    if address.kind == "kafka":
        from streamrec.data.stream.kafka import KafkaSource

        return KafkaSource(address.servers, address.name, group, settings, on_gap=on_gap)
    if address.kind == "redis":
        from streamrec.data.stream.redis_stream import RedisStreamSource

        return RedisStreamSource(address.redis_url, address.name, group, settings=settings)
    _no_settings(address, settings)
    assert address.path is not None
    return LocalLogSource(address.path, group)


def open_sink(
    where: str | Path | StreamAddress, settings: dict[str, Any] | None = None
) -> StreamSink:
    """The producer side of `where` (a local log folder is created if missing)."""
    address = _address(where)
    if address.kind == "kafka":
        from streamrec.data.stream.kafka import KafkaSink

        return KafkaSink(address.servers, address.name, settings)
    if address.kind == "redis":
        from streamrec.data.stream.redis_stream import RedisStreamSink

        return RedisStreamSink(address.redis_url, address.name, settings)
    _no_settings(address, settings)
    assert address.path is not None
    return LocalLog(address.path)
