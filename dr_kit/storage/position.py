"""Journal positions and lag reports: value types with one canonical form each."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from dr_kit.errors import InvalidInput

_POS_RE = re.compile(r"^g(\d+)/(\d+)$")


@dataclass(frozen=True, order=True)
class JournalPosition:
    """A point in a consistency group's single write order.

    ``generation`` starts at 1 and grows at every break in continuity (a resync after
    suspension or error); ``sequence`` is the number of the last write included, and keeps
    growing across generations.  Canonical string form: ``g<generation>/<sequence>``.
    """

    generation: int
    sequence: int

    def __post_init__(self) -> None:
        if self.generation < 0 or self.sequence < 0:
            raise InvalidInput(f"journal position must not be negative: {self.generation}/{self.sequence}")

    def __str__(self) -> str:
        return f"g{self.generation}/{self.sequence}"

    @classmethod
    def parse(cls, text: str) -> JournalPosition:
        m = _POS_RE.match(text.strip())
        if not m:
            raise InvalidInput(f"not a journal position: {text!r} (expected g<generation>/<sequence>, e.g. g1/42)")
        return cls(int(m.group(1)), int(m.group(2)))

    def advance(self, n: int = 1) -> JournalPosition:
        return JournalPosition(self.generation, self.sequence + n)

    def entries_behind(self, other: JournalPosition) -> int:
        """How many writes ``self`` is behind ``other`` (0 when at or ahead)."""
        return max(0, other.sequence - self.sequence)


@dataclass(frozen=True)
class LagReport:
    """How far the backup of one consistency group is behind its main site.

    ``time_lag_s`` is the age of the oldest write acknowledged at the main site and not yet
    applied at the backup: the data a disaster now would lose.  It is 0.0 only when the
    backup has applied everything; ``None`` means unknown (never reported as 0).
    """

    group: str
    state: str
    main: JournalPosition | None  # None: the main site's position is not known here
    applied: JournalPosition | None
    sequence_lag: int | None
    byte_lag: int | None
    time_lag_s: float | None
    consistent: bool | None
    measured_at: float
    source: str = "array"
    message: str = ""

    @property
    def caught_up(self) -> bool:
        return self.sequence_lag == 0 and self.time_lag_s == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["main"] = str(self.main) if self.main else None
        d["applied"] = str(self.applied) if self.applied else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LagReport:
        d = dict(d)
        d["main"] = JournalPosition.parse(d["main"]) if d.get("main") else None
        d["applied"] = JournalPosition.parse(d["applied"]) if d.get("applied") else None
        return cls(**d)
