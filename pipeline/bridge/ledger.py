"""Which of the bridge's Kafka offsets may be committed: those of records whose every
delivery a sink acknowledged (or dead-lettered), with every record before them done too.

A sink that is down holds back the commit of its events' records, not the other sinks:
they go on delivering, and after a restart the held records are read again (the sinks
that had them get them twice, under the same event ids).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from kafka import TopicPartition


@dataclass(frozen=True)
class Ticket:
    """One Kafka record, until each of its deliveries is done."""

    tp: TopicPartition
    offset: int


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per partition, its records in offset order -> deliveries still to be done.
        self._open: dict[TopicPartition, OrderedDict[int, int]] = {}

    def add(self, tp: TopicPartition, offset: int, deliveries: int) -> Ticket:
        with self._lock:
            self._open.setdefault(tp, OrderedDict())[offset] = deliveries
        return Ticket(tp, offset)

    def done(self, ticket: Ticket) -> None:
        with self._lock:
            part = self._open.get(ticket.tp)
            if part is not None and ticket.offset in part:
                part[ticket.offset] -= 1

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit (the next record to read) when records at
        its head are all done; those records are forgotten."""
        out = {}
        with self._lock:
            for tp, part in self._open.items():
                last = None
                while part:
                    offset, left = next(iter(part.items()))
                    if left > 0:
                        break
                    part.popitem(last=False)
                    last = offset
                if last is not None:
                    out[tp] = last + 1
        return out

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions this consumer no longer owns: their records are another's now."""
        with self._lock:
            for tp in tps:
                self._open.pop(tp, None)

    def pending(self) -> int:
        """Records read but not yet committable."""
        with self._lock:
            return sum(1 for part in self._open.values() for left in part.values() if left > 0)
