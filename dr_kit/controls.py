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
    """Controls of a lab: its replication link, its applications and its sites."""

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

    # -- DR operations: the application at a site, and the disaster ------------------
    def start_application(self, site: str, namespace: str, *, rate: float | None = None,
                          verify: bool = False) -> dict[str, Any]:
        """Start ``namespace``'s application at ``site`` on that site's PVCs of the
        namespace (idempotent; refused while it runs at the other site).  ``verify``: the
        application judges its images before its first transaction."""
        ...

    def stop_application(self, namespace: str) -> dict[str, Any]:
        """Stop ``namespace``'s application wherever it runs (idempotent); its last report."""
        ...

    def application_status(self, namespace: str) -> dict[str, Any] | None:
        """What ``namespace``'s application reports: ``running``, ``site``, ``committed``,
        ``last_order``, ``started_after_order``, ``verdict`` (None: it never ran)."""
        ...

    def crash_site(self, site: str) -> dict[str, Any]:
        """The disaster: kill every process of ``site`` at once (SIGKILL)."""
        ...

    def restart_site(self, site: str) -> dict[str, Any]:
        """Bring a crashed site's infrastructure back (its application only where the
        namespace's DR state says it is primary)."""
        ...


def needs(step: str, controls: LabControls | None, what: str) -> str | None:
    """None when ``controls`` can run ``step``; otherwise the note that says why it is skipped."""
    if controls is not None:
        return None
    return (f"skipped: {step} needs the lab's {what}; on real clusters dr_kit does not change "
            "the replication link or the application")


__all__ = ["LabControls", "needs"]
