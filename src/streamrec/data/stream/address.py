"""StreamAddress: where a stream lives, written the way users name it on the command line.

    runs/events                         a local log folder (the default: anything without "://")
    file:///data/events                 the same, spelled as a URL
    kafka://HOST:PORT[,HOST:PORT]/TOPIC a Kafka topic (every partition), through confluent-kafka
    redis://HOST:PORT[/DB]/STREAM       a Redis stream (rediss:// for TLS), through redis-py

A URL is never taken for a path: an unknown scheme, or a known one that is malformed (no topic,
no port), is refused with the forms above — so `--to kafka:/host/topic` cannot quietly create a
folder named `kafka:`. Torch-free and client-free: parsing needs neither confluent-kafka nor
redis installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

FORMS = (
    "a local folder, kafka://HOST:PORT/TOPIC or redis://HOST:PORT/STREAM "
    "(redis://HOST:PORT/DB/STREAM for another database)"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_KNOWN = {"file", "kafka", "redis", "rediss"}
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class StreamAddressError(ValueError):
    """A stream name that is neither a folder nor a well-formed stream URL."""


@dataclass(frozen=True)
class StreamAddress:
    kind: Literal["local", "kafka", "redis"]
    path: Path | None = None  # local: the log folder
    servers: str = ""  # kafka: "host:port,host:port"; redis: "host:port"
    name: str = ""  # kafka: the topic; redis: the stream key
    db: int = 0  # redis: the database number
    tls: bool = False  # rediss://

    def __str__(self) -> str:
        if self.kind == "local":
            return str(self.path)
        if self.kind == "kafka":
            return f"kafka://{self.servers}/{self.name}"
        db = f"/{self.db}" if self.db else ""
        return f"{'rediss' if self.tls else 'redis'}://{self.servers}{db}/{self.name}"

    @property
    def redis_url(self) -> str:
        """The server's URL as redis-py takes it (without the stream key)."""
        return f"{'rediss' if self.tls else 'redis'}://{self.servers}/{self.db}"


def parse_stream_address(text: str | Path) -> StreamAddress:
    """→ the StreamAddress `text` names; StreamAddressError (saying which forms are accepted)
    for anything that looks like a URL but is not one of ours, or is malformed."""
    if isinstance(text, Path):
        return StreamAddress("local", path=text)
    scheme = _SCHEME.match(text)
    if scheme is None or (len(scheme.group(1)) == 1 and text[2:3] in ("\\", "/")):
        return StreamAddress("local", path=Path(text))  # no scheme (or a Windows drive letter)
    name = scheme.group(1).lower()
    if name not in _KNOWN:
        raise StreamAddressError(f"{text!r}: unknown stream scheme {name!r}; use {FORMS}")
    if not text[len(name) + 1 :].startswith("//"):
        raise StreamAddressError(f"{text!r}: a stream URL needs '{name}://'; use {FORMS}")
    rest = text[len(name) + 3 :]
    if name == "file":
        if not rest.startswith("/"):
            raise StreamAddressError(f"{text!r}: use file:///absolute/path or a plain path")
        return StreamAddress("local", path=Path(unquote(rest)))
    servers, _, tail = rest.partition("/")
    parts = [unquote(p) for p in tail.split("/") if p]
    hosts = servers.split(",")
    if not servers or not all(_HOST_PORT.match(h) for h in hosts):
        raise StreamAddressError(f"{text!r}: expected HOST:PORT after '{name}://'; use {FORMS}")
    if name == "kafka":
        if len(parts) != 1:
            raise StreamAddressError(f"{text!r}: expected one topic, kafka://HOST:PORT/TOPIC")
        return StreamAddress("kafka", servers=servers, name=parts[0])
    if len(hosts) != 1:
        raise StreamAddressError(f"{text!r}: a Redis URL names one server")
    if len(parts) == 2 and parts[0].isdigit():
        return StreamAddress("redis", servers=servers, name=parts[1], db=int(parts[0]),
                             tls=name == "rediss")
    if len(parts) != 1:
        raise StreamAddressError(
            f"{text!r}: expected redis://HOST:PORT/STREAM or redis://HOST:PORT/DB/STREAM"
        )
    return StreamAddress("redis", servers=servers, name=parts[0], tls=name == "rediss")
