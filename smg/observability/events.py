"""Recent events an operator would look for first: members joining and dying, workers added,
ready, failing or removed, breakers opening and closing.

A bounded in-memory log (sans-IO: the caller passes the wall-clock time), read by the cluster
page (`smg.ui`). It keeps what the log lines say, so the page answers "what did the last fault
do" without a log pipeline; it is not a replacement for the log, and is lost on restart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

KEEP = 200  # events kept per gateway: enough for the last few faults of a large fleet


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # wall-clock seconds (the page shows and merges events of several gateways by it)
    kind: str  # member | worker | health | breaker
    subject: str  # the member's name or the worker's URL
    text: str
    severity: str = "info"  # info | warning: how the page colours it


class EventLog:
    def __init__(self, keep: int = KEEP) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self.total = 0  # events ever recorded: the page can tell that some scrolled away

    def record(self, at: float, kind: str, subject: str, text: str, severity: str = "info") -> None:
        self._events.append(Event(at, kind, subject, text, severity))
        self.total += 1

    def recent(self, limit: int = KEEP) -> list[dict[str, Any]]:
        """The newest `limit` events, newest first, as JSON objects."""
        events = list(self._events)[-limit:] if limit > 0 else []
        return [
            {"at": e.at, "kind": e.kind, "subject": e.subject, "text": e.text, "severity": e.severity} for e in reversed(events)
        ]
