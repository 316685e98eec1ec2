"""An exit policy for the tests: it cuts the i-th batch at the i-th exit of a script, whatever the link."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from nodes.policy import Decision


@dataclass
class ScriptedPolicy:
    """Cuts each batch at the next exit of ``exits`` (the warm-up batch included)."""

    exits: Iterator[int]
    name: str = "scripted"
    observes_link: bool = False

    def choose(self, n: int, now_ns: int) -> Decision:
        return Decision(next(self.exits), self.name, "script")

    def observe_rtt(self, rtt_ms: float) -> None:
        pass

    def observe_transfer(self, sent_bytes: int, round_trip_ms: float) -> None:
        pass
