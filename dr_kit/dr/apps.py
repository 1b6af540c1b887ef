"""Starting and stopping a namespace's application at a site, for DR operations.

Two implementations of one small interface:

- :class:`ClusterApps` (real clusters): the namespace's Deployments and StatefulSets are
  scaled to 0 (their replica count remembered in the annotation ``dr-kit.io/replicas``)
  and back; *serving* means every one of them reports ready replicas.  At a site without
  any, starting says so instead of pretending.
- :class:`LabApps` (the lab): the lab's application processes through
  :class:`~dr_kit.controls.LabControls`; *serving* means the instance started for this
  operation committed a transaction, and it reports its orders and its verdict on the
  images it opened.
"""

from __future__ import annotations

from typing import Any, Protocol

from dr_kit.controls import LabControls
from dr_kit.dr import manifests
from dr_kit.errors import NotFound
from dr_kit.kube import RESOURCES, Resource, register
from dr_kit.sites import Site

if "StatefulSet" not in RESOURCES:
    register(Resource("StatefulSet", "apps", "v1", "statefulsets", True))


class Apps(Protocol):
    def stop(self, site: Site, namespace: str) -> dict[str, Any]: ...

    def start(self, site: Site, namespace: str, *, rate: float | None = None,
              verify: bool = False) -> dict[str, Any]: ...

    def serving(self, site: Site, namespace: str) -> tuple[bool, str, dict[str, Any]]: ...

    def running_at(self, namespace: str) -> str | None: ...


class LabApps:
    """The lab's application processes."""

    def __init__(self, controls: LabControls) -> None:
        self.controls = controls

    def stop(self, site: Site, namespace: str) -> dict[str, Any]:
        return self.controls.stop_application(namespace)

    def start(self, site: Site, namespace: str, *, rate: float | None = None,
              verify: bool = False) -> dict[str, Any]:
        return self.controls.start_application(site.name, namespace, rate=rate, verify=verify)

    def serving(self, site: Site, namespace: str) -> tuple[bool, str, dict[str, Any]]:
        st = self.controls.application_status(namespace) or {}
        if not st.get("running") or st.get("site") != site.name:
            return False, f"the application of {namespace} is not running at the {site.name} site", st
        n = int(st.get("committed") or 0)
        return n > 0, f"{n} transactions committed at the {site.name} site", st

    def running_at(self, namespace: str) -> str | None:
        st = self.controls.application_status(namespace) or {}
        return st.get("site") if st.get("running") else None


class ClusterApps:
    """Deployments and StatefulSets of the namespace, scaled through the API."""

    def _apps(self, site: Site, namespace: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind in manifests.APP_KINDS:
            if kind == "StatefulSet" and not site.kube.serves(kind):
                continue
            try:
                out += [dict(o, kind=kind) for o in site.kube.items(kind, namespace)]
            except NotFound:
                continue
        return out

    def stop(self, site: Site, namespace: str) -> dict[str, Any]:
        scaled = []
        for app in self._apps(site, namespace):
            replicas = int((app.get("spec") or {}).get("replicas") or 0)
            if replicas > 0:
                site.kube.patch(app["kind"], app["metadata"]["name"],
                                manifests.scale_patch(0, remember=replicas), namespace)
                scaled.append(app["metadata"]["name"])
        return {"scaled_down": scaled}

    def start(self, site: Site, namespace: str, *, rate: float | None = None,
              verify: bool = False) -> dict[str, Any]:
        apps = self._apps(site, namespace)
        started = []
        for app in apps:
            ann = (app["metadata"].get("annotations") or {}).get(manifests.REPLICAS_ANNOTATION)
            want = int(ann) if ann and ann.isdigit() else max(1, int((app.get("spec") or {}).get("replicas") or 0))
            if int((app.get("spec") or {}).get("replicas") or 0) != want:
                site.kube.patch(app["kind"], app["metadata"]["name"], manifests.scale_patch(want), namespace)
            started.append(app["metadata"]["name"])
        return {"started": started, "note": None if apps else
                f"no Deployment or StatefulSet of namespace {namespace} at the {site.name} site: "
                "deploy the application there (replicas 0) for DR operations to start it"}

    def serving(self, site: Site, namespace: str) -> tuple[bool, str, dict[str, Any]]:
        apps = self._apps(site, namespace)
        if not apps:  # nothing to wait for (start said so)
            return True, f"no Deployment or StatefulSet of {namespace} at the {site.name} site", {}
        waiting = [a["metadata"]["name"] for a in apps
                   if int(((a.get("status") or {}).get("readyReplicas")) or 0) < 1]
        return (not waiting, "all ready" if not waiting else f"waiting for {', '.join(waiting)}",
                {"apps": [a["metadata"]["name"] for a in apps]})

    def running_at(self, namespace: str) -> str | None:
        return None


def apps_for(controls: LabControls | None) -> Apps:
    return LabApps(controls) if controls is not None else ClusterApps()


__all__ = ["Apps", "LabApps", "ClusterApps", "apps_for"]
