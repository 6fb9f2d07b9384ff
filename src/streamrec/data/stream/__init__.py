"""Stream sources: one interface (poll a batch of messages, commit offsets), several backends."""

from streamrec.data.stream.base import Message, StreamSource
from streamrec.data.stream.local_log import LocalLog, LocalLogSource

__all__ = ["LocalLog", "LocalLogSource", "Message", "StreamSource"]
