"""The lab's side of the seam: its sites through its kubeconfig, and its controls.

The library reaches the lab's sites exactly as real clusters, through the lab's
kubeconfig; what only a lab can do (slow or cut the replication link, set the shop's
rate, read the shop's progress) is offered through :class:`dr_kit.controls.LabControls`,
which :class:`Lab` implements.  Notebooks start with :func:`connect`::

    main, backup, lab = connect(".dr-lab")                       # the lab, started when needed
    main, backup, lab = connect(kubeconfig="~/.kube/config",     # real clusters: lab is None
                                main_context="prod", backup_context="dr")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from dr_kit.controls import LabControls
from dr_kit.lab.layout import DEFAULT_DIR, SITES, LabDir
from dr_kit.sites import Site


class Lab:
    """The controls of one lab folder (a :class:`~dr_kit.controls.LabControls`)."""

    def __init__(self, dir: str | os.PathLike[str] | None = DEFAULT_DIR) -> None:  # noqa: A002
        self.lab = LabDir.of(dir)

    @property
    def name(self) -> str:
        return f"lab {self.lab.root}"

    def __repr__(self) -> str:
        return f"Lab({str(self.lab.root)!r})"

    def set_link(self, *, delay_ms: float | None = None, rate_mbit: float | None = None,
                 cut: bool | None = None) -> dict[str, Any]:
        from dr_kit.lab import manager

        return manager.set_link(self.lab.root, delay_ms=delay_ms, rate_mbit=rate_mbit, cut=cut)

    def set_workload(self, rate: float) -> dict[str, Any]:
        from dr_kit.lab import manager

        return manager.set_workload(self.lab.root, rate)

    def committed_orders(self) -> int | None:
        try:
            status = json.loads(self.lab.shop_status.read_text())
        except (OSError, ValueError):
            return None
        last = status.get("last_order") if isinstance(status, dict) else None
        return int(last) if isinstance(last, int) else None

    def start_application(self, site: str, namespace: str, *, rate: float | None = None,
                          verify: bool = False) -> dict[str, Any]:
        from dr_kit.lab import manager

        return manager.start_app(self.lab.root, site, namespace, rate=rate, verify=verify)

    def stop_application(self, namespace: str) -> dict[str, Any]:
        from dr_kit.lab import manager

        return manager.stop_app(self.lab.root, namespace)

    def application_status(self, namespace: str) -> dict[str, Any] | None:
        from dr_kit.lab import manager

        return manager.app_status(self.lab.root, namespace)

    def crash_site(self, site: str) -> dict[str, Any]:
        from dr_kit.lab import manager

        return manager.crash(self.lab.root, site)

    def restart_site(self, site: str) -> dict[str, Any]:
        from dr_kit.lab import manager

        return manager.up(self.lab.root)

    def site(self, name: str = "main", *, timeout: float = 10.0) -> Site:
        """The lab's ``main`` or ``backup`` site, through the lab's kubeconfig."""
        return site(name, self.lab.root, timeout=timeout)


def site(name: str = "main", dir: str | os.PathLike[str] | None = DEFAULT_DIR,  # noqa: A002
         *, timeout: float = 10.0) -> Site:
    """Site ``main`` or ``backup`` of the lab in ``dir``: its kubeconfig context, nothing more."""
    from dr_kit.errors import InvalidInput

    if name not in SITES:
        raise InvalidInput(f"a lab site is 'main' or 'backup', not {name!r}")
    lab = LabDir.of(dir)
    lab.load()  # NotFound with the `dr-kit lab up` hint
    return Site.from_kubeconfig(lab.kubeconfig, name, name=name, timeout=timeout)


def connect(lab_dir: str | os.PathLike[str] | None = DEFAULT_DIR, kubeconfig: str | None = None,
            main_context: str = "main", backup_context: str = "backup", *,
            rate: float | None = None, progress: Callable[[str], None] | None = print
            ) -> tuple[Site, Site, LabControls | None]:
    """The main and backup sites, and the lab's controls.

    With a ``kubeconfig``: those clusters (contexts ``main_context``/``backup_context``) and
    no controls — the real-cluster path, also when the kubeconfig is a lab's.  Without:
    the lab in ``lab_dir``, started when it is not running (``rate`` sets the shop's
    transactions per second), and its controls.
    """
    from dr_kit.walkthrough import real_sites

    if kubeconfig:
        if progress:
            progress(f"real-cluster path: {kubeconfig} (contexts {main_context}, "
                     f"{backup_context}); steps that need a lab's controls are skipped")
        main, backup = real_sites(kubeconfig, main_context, backup_context)
        return main, backup, None
    from dr_kit.lab import manager

    manager.ensure_up(lab_dir, progress=progress)
    lab = Lab(lab_dir)
    if rate is not None:
        lab.set_workload(rate)
    return lab.site(main_context), lab.site(backup_context), lab


__all__ = ["Lab", "connect", "site"]
