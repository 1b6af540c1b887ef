"""The lab's storage plugins: what a vendor's CSI driver and replication plug-in do.

One process per site (``python -m dr_kit.lab.controllers --dir DIR --site main|backup``),
level-triggered: every pass lists the objects and brings the array and the cluster in line.

- **Provisioner** (both sites): a PVC of class ``lab-array`` gets an array volume and a
  bound PV whose ``csi.volumeHandle`` names it; a PVC whose ``dataSource`` is a
  VolumeSnapshot gets a writable clone of that snapshot instead (a restore).  A released
  PV's volume is deleted with it.
- **Replication plug-in** (main site): a VolumeGroupReplication (csi-addons) — or Hitachi
  ``Replication`` objects sharing a ``consistencyGroupId`` — becomes one array consistency
  group with one asynchronous pair per selected PVC, replicating through the lab's link.
  At the backup site it creates the namespace and a PV and bound PVC per replicated
  volume.  Status carries ``state``, conditions, ``lastSyncTime`` (the consistency point:
  the main-site time of the last write applied at the backup, or the time of the
  measurement when the backup has caught up), ``lastSyncDuration`` (how
  long that write took from its acknowledgement at the main site to being applied at the
  backup), ``lastSyncBytes`` (bytes applied at the backup since
  the previous status update) and ``persistentVolumeClaimsRefList``.
- **Group snapshot controller** (backup site): a VolumeGroupSnapshot becomes an array
  snapshot group at one sequence number, a VolumeGroupSnapshotContent, and one
  VolumeSnapshot + VolumeSnapshotContent per volume, ``readyToUse`` when done.  The
  consistency point is recorded in annotations ``lab.dr-kit.io/sequence``,
  ``lab.dr-kit.io/position``, ``lab.dr-kit.io/consistency-time`` and
  ``lab.dr-kit.io/lag-seconds`` (time lag at the moment of the snapshot).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dr_kit import published
from dr_kit.errors import Conflict, DrKitError, NotFound
from dr_kit.fsutil import write_json
from dr_kit.kube import Kube, api_client, parse_quantity
from dr_kit.kube import rfc3339 as now_rfc3339
from dr_kit.lab.apiserver.quantity import format_bytes
from dr_kit.lab.apiserver.selectors import match_selector
from dr_kit.lab.layout import (
    ANNOTATION_PREFIX,
    ARRAY_SECRET,
    CSI_DRIVER,
    PLUGIN_NAMESPACE,
    SHOP_PVCS,
    STORAGE_CLASS,
    LabDir,
)
from dr_kit.storage.client import ArrayClient, new_pair_secret

log = logging.getLogger("dr_kit.lab.controllers")

GSNAP = ("groupsnapshot.storage.k8s.io", "v1beta2")  # the version this plug-in writes
SNAP = ("snapshot.storage.k8s.io", "v1")
FINALIZER = "lab.dr-kit.io/storage"
REPLICATED_LABEL = published.REPLICATED_FROM
A = ANNOTATION_PREFIX
PUBLISH_EVERY = 5.0  # seconds between checks of the published array endpoint
DATABASES_EVERY = 0.5  # seconds between looks for restored shop databases to publish


def _meta(o: dict[str, Any]) -> dict[str, Any]:
    return o.setdefault("metadata", {})


def _condition(ctype: str, status: bool, reason: str, message: str, gen: int | None) -> dict[str, Any]:
    return {"type": ctype, "status": "True" if status else "False", "reason": reason,
            "message": message or reason, "lastTransitionTime": now_rfc3339(),
            "observedGeneration": gen or 0}


class SiteController:
    """All controllers of one site."""

    def __init__(self, lab: LabDir, site: str, *, interval: float = 0.25) -> None:
        self.lab = lab
        self.site = site
        self.interval = interval
        self.state = lab.load()
        self.kube = Kube(api_client(lab.kubeconfig, site), where=f"the {site} site's API server")
        ep = lab.array_endpoint(site, self.state)
        self.array = ArrayClient(ep["mgmt_url"], ep["data_socket"], token=lab.array_token(site))
        self.backup_kube: Kube | None = None
        self.backup_array: ArrayClient | None = None
        if site == "main":
            self.backup_kube = Kube(api_client(lab.kubeconfig, "backup"),
                                    where="the backup site's API server")
            bep = lab.array_endpoint("backup", self.state)
            self.backup_array = ArrayClient(bep["mgmt_url"], bep["data_socket"],
                                            token=lab.array_token("backup"))
        self.stopping = threading.Event()
        self._synced_bytes: dict[str, int] = {}
        self._errors: dict[str, str] = {}

    # -- the loop -------------------------------------------------------------------
    def run_once(self) -> None:
        for step in self.steps():
            try:
                step()
            except (DrKitError, OSError) as e:
                key = step.__name__
                msg = str(e).splitlines()[0][:300]
                if self._errors.get(key) != msg:
                    log.warning("%s: %s", key, msg)
                    self._errors[key] = msg

    def steps(self) -> list[Callable[[], None]]:
        s = [self.publish_array, self.provision, self.release]
        if self.site == "main":
            s += [self.replicate_csi_addons, self.replicate_hitachi, self.shop_status]
        else:
            s += [self.group_snapshots, self.publish_databases]
        return s

    def _items(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of ``kind`` ([] when the cluster does not serve it)."""
        try:
            return self.kube.items(kind, namespace)
        except NotFound:
            return []

    # -- what the plug-in publishes (see dr_kit.published) -----------------------------
    def publish_array(self) -> None:
        """The array's management endpoint, in a Secret of the plug-in's own namespace that
        the storage class names (as a CSI driver names its credentials)."""
        now = time.monotonic()
        if now < getattr(self, "_next_publish", 0.0):
            return
        self._next_publish = now + PUBLISH_EVERY
        self.kube.create("Namespace", {"metadata": {"name": PLUGIN_NAMESPACE, "labels": {
            "app.kubernetes.io/part-of": "dr-kit-lab"}}}, exist_ok=True)
        values = {published.MANAGEMENT_URL_KEY: self.array.url, "array": self.site}
        token = self.lab.array_token(self.site)
        if token:  # the management API needs it (as a CSI driver's credentials Secret holds them)
            values[published.TOKEN_KEY] = token
        secret = self.kube.get("Secret", ARRAY_SECRET, PLUGIN_NAMESPACE)
        if secret is None:
            self.kube.create("Secret", {
                "metadata": {"name": ARRAY_SECRET, "namespace": PLUGIN_NAMESPACE,
                             "labels": {"app.kubernetes.io/part-of": "dr-kit-lab"}},
                "type": "Opaque", "data": published.encode(values)}, exist_ok=True)
        elif any(published.secret_text(secret, k) != v for k, v in values.items()):
            self.kube.patch("Secret", ARRAY_SECRET, {"data": published.encode(values)},
                            PLUGIN_NAMESPACE)

    def _annotate_group(self, kind: str, obj: dict[str, Any], gname: str) -> None:
        m = obj["metadata"]
        if (m.get("annotations") or {}).get(published.ARRAY_GROUP) != gname:
            self.kube.patch(kind, m["name"], {"metadata": {"annotations": {
                published.ARRAY_GROUP: gname}}}, m.get("namespace"))

    def run(self) -> None:
        while not self.stopping.is_set():
            t0 = time.monotonic()
            self.run_once()
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    # -- provisioner ----------------------------------------------------------------
    def _volume_names(self) -> set[str]:
        return {v["name"] for v in self.array.status()["volumes"]}

    def provision(self) -> None:
        pvcs = [p for p in self.kube.items("PersistentVolumeClaim") if p["spec"].get("storageClassName") == STORAGE_CLASS
                and not _meta(p).get("deletionTimestamp")]
        pending = [p for p in pvcs if p.get("status", {}).get("phase") != "Bound"]
        if not pending:
            return
        existing = self._volume_names()
        for pvc in pending:
            m = pvc["metadata"]
            ns, uid = m["namespace"], m["uid"]
            if _meta(pvc).get("labels", {}).get(REPLICATED_LABEL):
                continue  # a backup-site copy: bound by the replication plug-in
            vol = f"pvc-{uid}"
            size = parse_quantity(pvc["spec"]["resources"]["requests"]["storage"])
            src = pvc["spec"].get("dataSource") or pvc["spec"].get("dataSourceRef")
            if vol not in existing:
                if src and src.get("kind") == "VolumeSnapshot":
                    handle = self._snapshot_handle(ns, src["name"])
                    if handle is None:
                        continue  # snapshot not ready yet
                    snap, source_vol = handle.split("/", 1)
                    info = self.array.create_clone(vol, snap, source_vol)
                    size = info["size"]
                else:
                    self.array.create_volume(vol, max(size, 1 << 20))
            self._bind(self.kube, pvc, vol, size)

    def _bind(self, kube: Kube, pvc: dict[str, Any], vol: str, size: int, *, pv_name: str | None = None,
              labels: dict[str, str] | None = None) -> None:
        m = pvc["metadata"]
        pv_name = pv_name or vol
        pv: dict[str, Any] = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": pv_name, "labels": labels or {},
                           "annotations": {"pv.kubernetes.io/provisioned-by": CSI_DRIVER}},
              "spec": {"capacity": {"storage": format_bytes(size)},
                       "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Delete" if not labels else "Retain",
                       "storageClassName": STORAGE_CLASS, "volumeMode": "Filesystem",
                       "csi": {"driver": CSI_DRIVER, "volumeHandle": vol},
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                    "namespace": m["namespace"], "name": m["name"], "uid": m.get("uid")}}}
        kube.create("PersistentVolume", pv, exist_ok=True)
        kube.patch("PersistentVolume", pv_name, {"status": {"phase": "Bound"}}, status=True)
        if pvc["spec"].get("volumeName") != pv_name:
            kube.patch("PersistentVolumeClaim", m["name"], {"spec": {"volumeName": pv_name}},
                       m["namespace"])
        kube.patch("PersistentVolumeClaim", m["name"],
                   {"status": {"phase": "Bound", "accessModes": pv["spec"]["accessModes"],
                               "capacity": {"storage": format_bytes(size)}}}, m["namespace"], status=True)

    def release(self) -> None:
        claims = {(p["metadata"]["namespace"], p["metadata"]["name"]): p["metadata"].get("uid")
                  for p in self.kube.items("PersistentVolumeClaim")}
        for pv in self.kube.items("PersistentVolume"):
            spec = pv.get("spec", {})
            if spec.get("csi", {}).get("driver") != CSI_DRIVER:
                continue
            ref = spec.get("claimRef") or {}
            key = (ref.get("namespace"), ref.get("name"))
            if key in claims and (not ref.get("uid") or claims[key] == ref.get("uid")):
                continue
            if spec.get("persistentVolumeReclaimPolicy") == "Delete":
                try:
                    self.array.delete_volume(spec["csi"]["volumeHandle"])
                except NotFound:
                    pass
                except Conflict:
                    continue  # still replicated or snapshotted: try again later
            else:
                if pv.get("status", {}).get("phase") != "Released":
                    self.kube.patch("PersistentVolume", pv["metadata"]["name"],
                                    {"status": {"phase": "Released"}}, status=True)
                continue
            self.kube.delete("PersistentVolume", pv["metadata"]["name"], missing_ok=True)

    def _snapshot_handle(self, ns: str, name: str) -> str | None:
        vs = self.kube.get("VolumeSnapshot", name, ns)
        if not vs or not vs.get("status", {}).get("readyToUse"):
            return None
        content = self.kube.get("VolumeSnapshotContent",
                                vs["status"]["boundVolumeSnapshotContentName"])
        return (content or {}).get("status", {}).get("snapshotHandle")

    # -- replication plug-in (main site) --------------------------------------------
    def _group_members(self, ns: str, selector: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """Bound PVCs of the namespace matching the selector, and their array volumes."""
        pvcs, vols = [], []
        pvs = {pv["metadata"]["name"]: pv for pv in self.kube.items("PersistentVolume")}
        for p in sorted(self.kube.items("PersistentVolumeClaim", ns), key=lambda p: p["metadata"]["name"]):
            if _meta(p).get("deletionTimestamp"):
                continue
            if not match_selector(selector, p["metadata"].get("labels") or {}):
                continue
            pv = pvs.get(p["spec"].get("volumeName") or "")
            if not pv or pv["spec"].get("csi", {}).get("driver") != CSI_DRIVER:
                continue
            pvcs.append(p)
            vols.append(pv["spec"]["csi"]["volumeHandle"])
        return pvcs, vols

    def _ensure_array_group(self, gname: str, vols: list[str], params: dict[str, Any]) -> dict[str, Any]:
        groups = {g["name"]: g for g in self.array.status()["groups"] if g["side"] == "main"}
        g = groups.get(gname)
        if g is None:
            opts: dict[str, Any] = {"mode": params.get("mode", "async")}
            if "journalCapacity" in params:
                opts["journal_capacity"] = parse_quantity(params["journalCapacity"])
            if "transferIntervalMs" in params:
                opts["transfer_interval_ms"] = float(params["transferIntervalMs"])
            # a fresh secret for this pair, told to the backup array first
            assert self.backup_array is not None
            secret = new_pair_secret()
            self.backup_array.authorize_pair(gname, secret)
            self.array.create_group(gname, vols, self.lab.link_address(self.state), secret=secret, **opts)
        else:
            have = set(g["members"])
            for v in vols:
                if v not in have:
                    self.array.add_member(gname, v)
            for v in sorted(have - set(vols)):
                self.array.remove_member(gname, v)
        return self.array.group_status(gname)

    def _ensure_backup_objects(self, ns: str, pvcs: list[dict[str, Any]], vols: list[str], gname: str) -> None:
        """The namespace, PVs and bound PVCs of the replicated volumes at the backup site."""
        assert self.backup_kube is not None and self.backup_array is not None
        bk = self.backup_kube
        backup_vols = {v["name"]: v for v in self.backup_array.status()["volumes"]}
        names = {n["metadata"]["name"] for n in bk.items("Namespace")}
        if ns not in names:
            bk.create("Namespace", {"metadata": {"name": ns, "labels": {REPLICATED_LABEL: "main"}}},
                      exist_ok=True)
        existing = {p["metadata"]["name"]: p for p in bk.items("PersistentVolumeClaim", ns)}
        for pvc, vol in zip(pvcs, vols, strict=True):
            if vol not in backup_vols:
                continue  # the backup array creates it when the pair starts
            name = pvc["metadata"]["name"]
            bp = existing.get(name)
            if bp is None:
                labels = dict(pvc["metadata"].get("labels") or {})
                labels[REPLICATED_LABEL] = "main"
                body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": name, "namespace": ns, "labels": labels,
                                     "annotations": {A + "consistency-group": gname, A + "volume": vol}},
                        "spec": {"storageClassName": STORAGE_CLASS,
                                 "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                                 "resources": pvc["spec"]["resources"], "volumeName": vol}}
                bp = bk.create("PersistentVolumeClaim", body, exist_ok=True)
            if bp and bp.get("status", {}).get("phase") != "Bound":
                self._bind(bk, bp, vol, backup_vols[vol]["size"], pv_name=vol,
                           labels={REPLICATED_LABEL: "main"})

    def _status_from(self, g: dict[str, Any], pvcs: list[dict[str, Any]], gen: int | None,
                     key: str) -> dict[str, Any]:
        lag = g["lag"]
        state = g["state"]
        consistent = bool(lag.get("consistent"))
        applied_bytes = int(g.get("applied_bytes", 0))
        synced = max(0, applied_bytes - self._synced_bytes.get(key, applied_bytes))
        self._synced_bytes[key] = applied_bytes
        msg = g.get("message") or ("replicating" if state == "pair" else state)
        st: dict[str, Any] = {
            "state": "Primary", "message": msg, "observedGeneration": gen or 0,
            "persistentVolumeClaimsRefList": [{"name": p["metadata"]["name"]} for p in pvcs],
            "conditions": [
                _condition("Completed", state == "pair" and consistent, "Replicating" if state == "pair" else state.capitalize(), msg, gen),
                _condition("Degraded", state in ("suspended", "error"), state.capitalize() if state in ("suspended", "error") else "Healthy", msg, gen),
                _condition("Resyncing", state in ("copy", "resync"), "Copying" if state in ("copy", "resync") else "NotResyncing", msg, gen),
            ],
            "lastSyncBytes": synced,
        }
        t, at = self._applied(g)
        if t and at:
            st["lastSyncDuration"] = f"{max(0.0, at - t):.3f}s"
        if state == "pair" and consistent and lag.get("sequence_lag") == 0 and \
                lag.get("time_lag_s") == 0:
            t = lag.get("measured_at") or t  # caught up: the backup equals the main as of now
        if t:
            st["lastSyncTime"] = now_rfc3339(t)
        return st

    def _applied(self, g: dict[str, Any]) -> tuple[float | None, float | None]:
        """(main-site time of the last write applied at the backup, when it was applied)."""
        assert self.backup_array is not None
        try:
            bg = self.backup_array.group_status(g["name"])
        except (NotFound, DrKitError):
            return None, None
        return bg.get("applied_time"), bg.get("applied_at")

    def replicate_csi_addons(self) -> None:
        classes = {c["metadata"]["name"]: c for c in self._items("VolumeGroupReplicationClass")}
        for vgr in self._items("VolumeGroupReplication"):
            m = vgr["metadata"]
            ns, name = m["namespace"], m["name"]
            cls = classes.get(vgr["spec"].get("volumeGroupReplicationClassName", ""))
            if cls is None or cls["spec"].get("provisioner") != CSI_DRIVER:
                continue  # another driver's
            gname = f"{ns}-{name}"[:63].rstrip("-.")
            if m.get("deletionTimestamp"):
                self._teardown(gname)
                fins = [f for f in m.get("finalizers", []) if f != FINALIZER]
                self.kube.patch("VolumeGroupReplication", name, {"metadata": {"finalizers": fins}}, ns)
                continue
            if FINALIZER not in (m.get("finalizers") or []):
                self.kube.patch("VolumeGroupReplication", name,
                                {"metadata": {"finalizers": [*(m.get("finalizers") or []), FINALIZER]}}, ns)
            self._annotate_group("VolumeGroupReplication", vgr, gname)
            pvcs, vols = self._group_members(ns, vgr["spec"].get("source", {}).get("selector") or {})
            if not vols:
                continue
            g = self._ensure_array_group(gname, vols, cls["spec"].get("parameters") or {})
            self._ensure_backup_objects(ns, pvcs, vols, gname)
            status = self._status_from(g, pvcs, m.get("generation"), f"vgr/{ns}/{name}")
            self.kube.patch("VolumeGroupReplication", name, {"status": status}, ns, status=True)

    def replicate_hitachi(self) -> None:
        reps = self._items("Replication")
        by_group: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in reps:
            cg = str(r["spec"].get("consistencyGroupId", r["metadata"]["name"]))
            by_group.setdefault((r["metadata"]["namespace"], cg), []).append(r)
        for (ns, cg), members in by_group.items():
            gname = f"{ns}-cg{cg}"[:63].rstrip("-.")
            live = [r for r in members if not r["metadata"].get("deletionTimestamp")]
            for r in members:
                m = r["metadata"]
                if m.get("deletionTimestamp") and FINALIZER in (m.get("finalizers") or []):
                    if not live:
                        self._teardown(gname)
                    fins = [f for f in m.get("finalizers", []) if f != FINALIZER]
                    self.kube.patch("Replication", m["name"], {"metadata": {"finalizers": fins}}, ns)
                elif FINALIZER not in (m.get("finalizers") or []):
                    self.kube.patch("Replication", m["name"],
                                    {"metadata": {"finalizers": [*(m.get("finalizers") or []), FINALIZER]}}, ns)
                if not m.get("deletionTimestamp"):
                    self._annotate_group("Replication", r, gname)
            pvcs, vols = [], []
            pvs = {pv["metadata"]["name"]: pv for pv in self.kube.items("PersistentVolume")}
            for r in sorted(live, key=lambda r: r["spec"].get("persistentVolumeClaimName", "")):
                p = self.kube.get("PersistentVolumeClaim",
                                  r["spec"].get("persistentVolumeClaimName", ""), ns)
                pv = pvs.get((p or {}).get("spec", {}).get("volumeName") or "")
                if p and pv and pv["spec"].get("csi", {}).get("driver") == CSI_DRIVER:
                    pvcs.append(p)
                    vols.append(pv["spec"]["csi"]["volumeHandle"])
            if not vols:
                continue
            mode = "sync" if str(live[0]["spec"].get("replicationType", "UR")).upper() == "TC" else "async"
            g = self._ensure_array_group(gname, vols, {"mode": mode})
            parent = live[0]["spec"].get("parentName")
            if parent:
                rg = self.kube.get("ReplicationGroup", parent, ns)
                want = (rg or {}).get("spec", {}).get("desiredPairState", "pair")
                if want == "split" and g["state"] == "pair":
                    self.array.group_action(gname, "suspend")
                elif want == "pair" and g["state"] == "suspended":
                    self.array.group_action(gname, "resync")
            self._ensure_backup_objects(ns, pvcs, vols, gname)
            pair_state = {"pair": "PAIR", "copy": "COPY", "resync": "COPY", "suspended": "PSUS",
                          "error": "PSUE"}.get(g["state"], g["state"].upper())
            t, _ = self._applied(g)
            for r, p in zip(live, pvcs, strict=False):
                st = {"pairState": pair_state, "consistencyGroupId": cg, "copyGroup": gname,
                      "lastSyncTime": now_rfc3339(t) if t else None,
                      "timeLagSeconds": g["lag"].get("time_lag_s"), "message": g.get("message", ""),
                      "persistentVolumeClaimName": p["metadata"]["name"]}
                self.kube.patch("Replication", r["metadata"]["name"], {"status": st}, ns, status=True)
            if parent:
                self.kube.patch("ReplicationGroup", parent,
                                       {"status": {"pairState": pair_state, "copyGroup": gname,
                                                   "members": [p["metadata"]["name"] for p in pvcs]}}, ns, status=True)

    def _teardown(self, gname: str) -> None:
        """Replication removed: stop the pairs; backup volumes stay (their data is kept)."""
        assert self.backup_array is not None
        try:
            self.array.delete_group(gname)
        except NotFound:
            pass
        try:
            self.backup_array.delete_group(gname)  # the volumes become plain volumes there
        except NotFound:
            pass

    # -- the shop application's pod (main site) ------------------------------------
    def shop_status(self) -> None:
        """Report the shop process as a Pod and in its Deployment's status, as a kubelet
        would: Running while its process lives (checked by pid and start time), Failed
        when it has died, nothing when the lab never started it."""
        now = time.monotonic()
        if now < getattr(self, "_next_shop_check", 0.0):
            return
        self._next_shop_check = now + 1.0
        from dr_kit.lab import processes
        from dr_kit.lab.layout import SHOP_NAMESPACE

        record = self.lab.load().get("processes", {}).get("shop")
        if not record:
            return
        running = processes.alive(record)
        key = (record.get("pid"), running)
        if key == getattr(self, "_shop_reported", None):
            return
        started = now_rfc3339(record.get("create_time"))
        labels = {"app": "shop", "app.kubernetes.io/part-of": "dr-kit-lab"}
        pod_status = {
            "phase": "Running" if running else "Failed", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True" if running else "False",
                            "lastTransitionTime": now_rfc3339()}],
            "containerStatuses": [{
                "name": "shop", "ready": running, "restartCount": 0, "image": "dr-kit/shopapp:lab",
                "imageID": "", "started": running,
                "state": ({"running": {"startedAt": started}} if running else
                          {"terminated": {"exitCode": 137, "reason": "Error",
                                          "message": f"process {record.get('pid')} is gone",
                                          "finishedAt": now_rfc3339()}})}]}
        name = "shop-0"
        if self.kube.get("Pod", name, SHOP_NAMESPACE) is None:
            self.kube.create("Pod", {
                "metadata": {"name": name, "namespace": SHOP_NAMESPACE, "labels": labels,
                             "annotations": {A + "pid": str(record.get("pid"))}},
                "spec": {"containers": [{"name": "shop", "image": "dr-kit/shopapp:lab"}]}},
                exist_ok=True)
        self.kube.patch("Pod", name, {"metadata": {"annotations": {A + "pid": str(record.get("pid"))}}},
                        SHOP_NAMESPACE)
        self.kube.patch("Pod", name, {"status": pod_status}, SHOP_NAMESPACE, status=True)
        n = 1 if running else 0
        try:
            self.kube.patch("Deployment", "shop", {"status": {
                "replicas": 1, "updatedReplicas": 1, "readyReplicas": n, "availableReplicas": n,
                "unavailableReplicas": 1 - n}}, SHOP_NAMESPACE, status=True)
        except NotFound:
            pass
        self._shop_reported = key

    # -- group snapshots (backup site) ----------------------------------------------
    def group_snapshots(self) -> None:
        classes = {c["metadata"]["name"]: c for c in self._items("VolumeGroupSnapshotClass")}
        for vgs in self._items("VolumeGroupSnapshot"):
            m = vgs["metadata"]
            if m.get("deletionTimestamp"):
                self._delete_group_snapshot(vgs)
                continue
            if vgs.get("status", {}).get("readyToUse") or vgs.get("status", {}).get("error"):
                continue
            cls = classes.get(vgs["spec"].get("volumeGroupSnapshotClassName") or "")
            if cls is None:
                defaults = [c for c in classes.values() if (c["metadata"].get("annotations") or {}).get(
                    "groupsnapshot.storage.kubernetes.io/is-default-class") == "true"]
                cls = defaults[0] if defaults else None
            if cls is None or cls.get("driver") != CSI_DRIVER:
                continue
            self._take_group_snapshot(vgs, cls)

    def _error(self, kind: str, obj: dict[str, Any], msg: str) -> None:
        m = obj["metadata"]
        self.kube.patch(kind, m["name"],
                        {"status": {"readyToUse": False, "error": {"message": msg, "time": now_rfc3339()}}},
                        m.get("namespace"), status=True)

    def _take_group_snapshot(self, vgs: dict[str, Any], cls: dict[str, Any]) -> None:
        m = vgs["metadata"]
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        selector = vgs["spec"].get("source", {}).get("selector")
        if not selector:
            self._error("VolumeGroupSnapshot", vgs,
                        "only spec.source.selector is supported by the lab driver")
            return
        if FINALIZER not in (m.get("finalizers") or []):
            self.kube.patch("VolumeGroupSnapshot", name,
                            {"metadata": {"finalizers": [*(m.get("finalizers") or []), FINALIZER]}}, ns)
        pvcs, vols = self._group_members(ns, selector)
        if not vols:
            self._error("VolumeGroupSnapshot", vgs,
                        f"no bound PVC of the lab driver in namespace {ns} matches the selector")
            return
        status = self.array.status()
        vgroup = {v["name"]: v.get("group") for v in status["volumes"]}
        groups = {vgroup.get(v) for v in vols}
        snap = f"groupsnapshot-{uid}"
        existing = {s["name"]: s for s in status["snapshots"]}
        if snap in existing:
            info = existing[snap]
        elif len(groups) == 1 and None not in groups:
            group = groups.pop()
            lag = self._backup_lag(group)
            info = self.array.create_snapshot(snap, group=group, volumes=vols)
            info["lag_s"] = lag
        else:
            info = self.array.create_snapshot(snap, volumes=vols)  # one instant, no common sequence
            info["lag_s"] = None
        created = now_rfc3339(info.get("created"))
        content_name = f"groupsnapcontent-{uid}"
        handles = [f"{snap}/{v}" for v in vols]
        self.kube.create("VolumeGroupSnapshotContent", {
            "apiVersion": "/".join(GSNAP), "kind": "VolumeGroupSnapshotContent",
            "metadata": {"name": content_name},
            "spec": {"deletionPolicy": cls.get("deletionPolicy", "Delete"), "driver": CSI_DRIVER,
                     "volumeGroupSnapshotClassName": cls["metadata"]["name"],
                     "source": {"groupSnapshotHandles": {"volumeGroupSnapshotHandle": snap,
                                                         "volumeSnapshotHandles": handles}},
                     "volumeGroupSnapshotRef": {"kind": "VolumeGroupSnapshot", "apiVersion": "/".join(GSNAP),
                                                "name": name, "namespace": ns, "uid": uid}}},
            exist_ok=True)
        self.kube.patch("VolumeGroupSnapshotContent", content_name, {"status": {
            "readyToUse": True, "creationTime": created, "volumeGroupSnapshotHandle": snap,
            "volumeSnapshotInfoList": [{"volumeHandle": v, "snapshotHandle": h, "readyToUse": True,
                                        "creationTime": int(info["created"] * 1e9)}
                                       for v, h in zip(vols, handles, strict=True)]}}, status=True)
        for pvc, vol, handle in zip(pvcs, vols, handles, strict=True):
            pname = pvc["metadata"]["name"]
            vs_name = f"{name}-{pname}"[:253]
            vsc_name = f"snapcontent-{uid[:8]}-{vol}"[:253]
            size = parse_quantity((pvc.get("status", {}).get("capacity") or {}).get("storage")
                                  or pvc["spec"]["resources"]["requests"]["storage"])
            self.kube.create("VolumeSnapshotContent", {
                "apiVersion": "/".join(SNAP), "kind": "VolumeSnapshotContent",
                "metadata": {"name": vsc_name, "labels": {A + "group-snapshot-uid": uid}},
                "spec": {"deletionPolicy": "Delete", "driver": CSI_DRIVER,
                         "source": {"snapshotHandle": handle},
                         "volumeSnapshotRef": {"kind": "VolumeSnapshot", "apiVersion": "/".join(SNAP),
                                               "name": vs_name, "namespace": ns}}},
                exist_ok=True)
            self.kube.patch("VolumeSnapshotContent", vsc_name, {"status": {
                "readyToUse": True, "snapshotHandle": handle, "volumeGroupSnapshotHandle": snap,
                "creationTime": int(info["created"] * 1e9), "restoreSize": size}}, status=True)
            self.kube.create("VolumeSnapshot", {
                "apiVersion": "/".join(SNAP), "kind": "VolumeSnapshot",
                "metadata": {"name": vs_name, "namespace": ns,
                             "labels": {A + "group-snapshot": name, A + "pvc": pname},
                             "ownerReferences": [{"apiVersion": "/".join(GSNAP), "kind": "VolumeGroupSnapshot",
                                                  "name": name, "uid": uid}]},
                "spec": {"source": {"volumeSnapshotContentName": vsc_name}}}, exist_ok=True)
            self.kube.patch("VolumeSnapshot", vs_name, {"status": {
                "readyToUse": True, "boundVolumeSnapshotContentName": vsc_name, "creationTime": created,
                "restoreSize": format_bytes(size), "volumeGroupSnapshotName": name}}, ns, status=True)
        ann = {published.SNAPSHOT_ARRAY_SNAPSHOT: snap,
               published.SNAPSHOT_CONSISTENT: json.dumps(info.get("consistent")),
               published.SNAPSHOT_VOLUMES: ",".join(p["metadata"]["name"] for p in pvcs)}
        if info.get("sequence") is not None:
            ann[published.SNAPSHOT_SEQUENCE] = str(info["sequence"])
            ann[published.SNAPSHOT_POSITION] = info.get("position", "")
        if info.get("time"):  # unix time of the last applied write
            ann[published.SNAPSHOT_TIME] = f"{info['time']:.6f}"
        if info.get("lag_s") is not None:
            ann[published.SNAPSHOT_LAG] = f"{info['lag_s']:.6f}"
        self.kube.patch("VolumeGroupSnapshot", name, {"metadata": {"annotations": ann}}, ns)
        self.kube.patch("VolumeGroupSnapshot", name, {"status": {
            "readyToUse": True, "boundVolumeGroupSnapshotContentName": content_name,
            "creationTime": created}}, ns, status=True)

    # -- the DBA's part for the lab's shop (backup site) -------------------------------
    def publish_databases(self) -> None:
        """Once each shop database's PVC of a snapshot group is restored and bound, publish
        the databases' URLs in the Secret ``<group>-databases`` (``drkit+array://`` URLs
        over this array's data path), as a DBA publishes the database instances serving
        restored volumes; remove it when the restores are gone."""
        from dr_kit.sqlite.dialect import url_for

        now = time.monotonic()
        if now < getattr(self, "_next_databases", 0.0):
            return
        self._next_databases = now + DATABASES_EVERY
        pvs = {pv["metadata"]["name"]: pv for pv in self.kube.items("PersistentVolume")}
        snaps: dict[tuple[str, str], dict[str, Any] | None] = {}
        found: dict[tuple[str, str], dict[str, str]] = {}
        claims = sorted(self.kube.items("PersistentVolumeClaim"),
                        key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
        for pvc in claims:
            m, spec = pvc["metadata"], pvc.get("spec") or {}
            src = spec.get("dataSource") or spec.get("dataSourceRef") or {}
            if src.get("kind") != "VolumeSnapshot" or m.get("deletionTimestamp") or \
                    (pvc.get("status") or {}).get("phase") != "Bound":
                continue
            ns = m["namespace"]
            key = (ns, src.get("name") or "")
            if key not in snaps:
                snaps[key] = self.kube.get("VolumeSnapshot", key[1], ns)
            vs = snaps[key] or {}
            group = (vs.get("status") or {}).get("volumeGroupSnapshotName")
            db_file = SHOP_PVCS.get((vs.get("metadata", {}).get("labels") or {}).get(A + "pvc", ""))
            pv = pvs.get(spec.get("volumeName") or "") or {}
            volume = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle")
            if group and db_file and volume and self.array.data_socket:
                found.setdefault((ns, group), {}).setdefault(
                    db_file.split(".")[0], url_for(self.site, volume, db_file, self.array.data_socket))
        complete = {k: v for k, v in found.items() if set(v) == {"stock", "sales"}}
        for (ns, group), urls in complete.items():
            name = published.databases_secret(group)
            values = {published.STOCK_URL_KEY: urls["stock"], published.SALES_URL_KEY: urls["sales"]}
            secret = self.kube.get("Secret", name, ns)
            if secret is None:
                self.kube.create("Secret", {
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {A + "databases-of": group,
                                            "app.kubernetes.io/part-of": "dr-kit-lab"}},
                    "type": "Opaque", "data": published.encode(values)}, exist_ok=True)
            elif any(published.secret_text(secret, k) != v for k, v in values.items()):
                self.kube.patch("Secret", name, {"data": published.encode(values)}, ns)
        for secret in self.kube.items("Secret", label_selector=A + "databases-of"):
            m = secret["metadata"]
            if (m["namespace"], m["labels"][A + "databases-of"]) not in complete:
                self.kube.delete("Secret", m["name"], m["namespace"], missing_ok=True)

    def _backup_lag(self, group: str | None) -> float | None:
        """Time lag of the group at this moment, read at the main site (None when unknown)."""
        if not group:
            return None
        try:
            main = ArrayClient(self.lab.array_endpoint("main", self.state)["mgmt_url"], timeout=2.0,
                               token=self.lab.array_token("main"))
            return main.lag(group).time_lag_s
        except DrKitError:
            return None

    def _delete_group_snapshot(self, vgs: dict[str, Any]) -> None:
        m = vgs["metadata"]
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        if FINALIZER not in (m.get("finalizers") or []):
            return
        for vs in self._items("VolumeSnapshot", ns):
            if (vs["metadata"].get("labels") or {}).get(A + "group-snapshot") == name:
                self.kube.delete("VolumeSnapshot", vs["metadata"]["name"], ns, missing_ok=True)
        for vsc in self._items("VolumeSnapshotContent"):
            if (vsc["metadata"].get("labels") or {}).get(A + "group-snapshot-uid") == uid:
                self.kube.delete("VolumeSnapshotContent", vsc["metadata"]["name"], missing_ok=True)
        self.kube.delete("VolumeGroupSnapshotContent", f"groupsnapcontent-{uid}", missing_ok=True)
        try:
            self.array.delete_snapshot(f"groupsnapshot-{uid}")
        except NotFound:
            pass
        except Conflict as e:  # restored PVCs still use it
            self._error("VolumeGroupSnapshot", vgs, f"cannot delete yet: {e}")
            return
        fins = [f for f in m.get("finalizers", []) if f != FINALIZER]
        self.kube.patch("VolumeGroupSnapshot", name, {"metadata": {"finalizers": fins}}, ns)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dr_kit.lab.controllers",
                                 description="Run one lab site's storage plug-ins.")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--site", choices=("main", "backup"), required=True)
    ap.add_argument("--ready-file")
    ap.add_argument("--interval", type=float, default=0.25)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        ctl = SiteController(LabDir.of(a.dir), a.site, interval=a.interval)
        ctl.run_once()
    except DrKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.ready_file:
        write_json(a.ready_file, {"site": a.site})
    signal.signal(signal.SIGTERM, lambda *_: ctl.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: ctl.stopping.set())
    ctl.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
