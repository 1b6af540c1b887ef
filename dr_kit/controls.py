"""What only a lab can do to its sites, as one small protocol the lab implements.

The walkthrough shows what a slower replication link or a busier shop does to the lag.
On real clusters dr_kit never slows a production link nor drives a production
application, so those steps need a :class:`LabControls`: the embedded lab provides one
(``dr_kit.lab.connect``); real clusters have none, and the steps that need it are
skipped with a note saying so (never run under a name they did not earn).

The library only depends on this protocol, never on the lab itself.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class LabControls(Protocol):
    """Controls of a lab: its replication link and its shop application."""

    @property
    def name(self) -> str:
        """What these controls drive, for messages (e.g. ``lab /home/me/.dr-lab``)."""
        ...

    def set_link(self, *, delay_ms: float | None = None, rate_mbit: float | None = None,
                 cut: bool | None = None) -> dict[str, Any]:
        """Slow down (one-way delay, rate cap; 0 = none), cut or restore the replication link."""
        ...

    def set_workload(self, rate: float) -> dict[str, Any]:
        """The shop's transactions per second (0 pauses it)."""
        ...

    def committed_orders(self) -> int | None:
        """The last order id the shop committed (None while it reports nothing)."""
        ...


def needs(step: str, controls: LabControls | None, what: str) -> str | None:
    """None when ``controls`` can run ``step``; otherwise the note that says why it is skipped."""
    if controls is not None:
        return None
    return (f"skipped: {step} needs the lab's {what}; on real clusters dr_kit does not change "
            "the replication link or the application")


__all__ = ["LabControls", "needs"]
