"""What a planner decision counts, for the controller to hand to the metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Tally:
    """What a decision counts, for the controller to hand to the metrics."""

    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind, result) -> placement decisions."""
    durations: list[tuple[str, float]] = field(default_factory=list)
    """(kind, seconds) per engine call."""
    replans: Counter[str] = field(default_factory=Counter)
    migrations: int = 0
    gpus_in_use: int = 0
    gpus_total: int = 0
    pending: int = 0
