"""Measure the namespace operator at scale on a fresh lab: N namespaces x M PVCs labelled at once.

    .venv/bin/python scripts/operator_scale.py --namespaces 100 --pvcs 10 [--json]

Steps: a lab in a temporary folder; N namespaces with M PVCs each (1 MiB, empty), bound by
the lab's provisioner before anything is labelled; every namespace labelled at once; then
- ``groups_s``: labels -> every namespace has its VolumeGroupReplication selecting all its
  PVCs (the operator's own work),
- ``plugin_done_s``: labels -> the lab's replication plug-in reports every group replicating
  (Completed, not Degraded, not Resyncing) and every backup PVC is bound (the plug-ins' part),
- ``protected_s``: labels -> every namespace's status says Protected (the operator saw it),
- the operator process's threads and RSS (largest sampled),
- one read of ``dr-kit protection status`` (the table of every namespace, median of 3),
- its API writes and the namespaces' resourceVersions over an idle period afterwards.
The lab is stopped and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from dr_kit.lab import manager
from dr_kit.lab.layout import LabDir
from dr_kit.operator import cli

LABEL = {"dr-kit.io/backup": "ConsistentCopyToCloud"}
GROUP_KEY = "dr-kit.io/consistency-group"


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def _writes(url: str) -> float:
    return sum(float(v) for v in re.findall(
        r"^dr_kit_operator_api_writes_total\{[^}]*\} (\S+)", _metrics(url), re.M))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--namespaces", type=int, default=100)
    ap.add_argument("--pvcs", type=int, default=10)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out: dict[str, float | int | str] = {"namespaces": args.namespaces, "pvcs": args.pvcs}
    with tempfile.TemporaryDirectory(prefix="dr-kit-opscale-") as tmp:
        lab = Path(tmp) / "lab"
        try:
            manager.up(lab, timeout=180)
            api = k8s_config.new_client_from_config(str(lab / "kubeconfig"), "main")
            core, co = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
            bcore = k8s.CoreV1Api(k8s_config.new_client_from_config(str(lab / "kubeconfig"),
                                                                    "backup"))
            names = [f"app{i:03d}" for i in range(args.namespaces)]
            t0 = time.monotonic()
            for n in names:
                core.create_namespace({"metadata": {"name": n}})
                for j in range(args.pvcs):
                    core.create_namespaced_persistent_volume_claim(n, {
                        "metadata": {"name": f"vol{j}"},
                        "spec": {"storageClassName": "lab-array",
                                 "accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "1Mi"}}}})
            out["create_s"] = round(time.monotonic() - t0, 1)

            def bound() -> int:
                return sum(1 for p in core.list_persistent_volume_claim_for_all_namespaces(
                    label_selector=None).items
                    if p.metadata.namespace in set(names) and p.status.phase == "Bound")

            total = args.namespaces * args.pvcs
            deadline = time.monotonic() + args.timeout
            while bound() < total:
                if time.monotonic() > deadline:
                    raise SystemExit("PVCs not bound in time")
                time.sleep(1)
            out["bound_s"] = round(time.monotonic() - t0, 1)

            rec = LabDir.of(lab).load()["processes"]["operator"]
            proc = psutil.Process(rec["pid"])
            log = LabDir.of(lab).log_file("operator").read_text()
            url = re.findall(r"health and metrics on (http://127\.0\.0\.1:\d+)", log)[-1]
            peak = {"threads": proc.num_threads(), "rss": proc.memory_info().rss}
            out["operator_threads_before"] = peak["threads"]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.5):
                    try:
                        peak["threads"] = max(peak["threads"], proc.num_threads())
                        peak["rss"] = max(peak["rss"], proc.memory_info().rss)
                    except psutil.Error:
                        return

            threading.Thread(target=sample, daemon=True).start()
            writes0 = _writes(url)
            t_label = time.monotonic()
            for n in names:
                core.patch_namespace(n, {"metadata": {"labels": LABEL}})
            out["label_all_s"] = round(time.monotonic() - t_label, 2)

            def groups_done() -> bool:
                vgrs = co.list_cluster_custom_object("replication.storage.openshift.io",
                                                     "v1alpha1", "volumegroupreplications")
                have = {v["metadata"]["namespace"] for v in vgrs["items"]}
                if not set(names) <= have:
                    return False
                labelled = sum(1 for p in core.list_persistent_volume_claim_for_all_namespaces(
                    label_selector=GROUP_KEY).items if p.metadata.namespace in set(names))
                return labelled == total

            def plugin_done() -> bool:
                vgrs = co.list_cluster_custom_object("replication.storage.openshift.io",
                                                     "v1alpha1", "volumegroupreplications")
                good = 0
                for v in vgrs["items"]:
                    c = {x["type"]: x["status"] for x in
                         (v.get("status") or {}).get("conditions") or []}
                    good += (c.get("Completed"), c.get("Degraded"), c.get("Resyncing")) == (
                        "True", "False", "False")
                backup_bound = sum(1 for p in bcore.list_persistent_volume_claim_for_all_namespaces(
                    ).items if p.metadata.namespace in set(names) and p.status.phase == "Bound")
                return good == len(names) and backup_bound == total

            groups_s = plugin_s = protected_s = None
            while time.monotonic() < deadline:
                if groups_s is None and groups_done():
                    groups_s = time.monotonic() - t_label
                if groups_s is not None and plugin_s is None and plugin_done():
                    plugin_s = time.monotonic() - t_label
                if protected_s is None:
                    rows = cli.protection_table(lab_dir=lab)
                    done = sum(1 for r in rows if r["namespace"] in names
                               and r["state"] == "Protected")
                    if groups_s is not None and done == len(names):
                        protected_s = time.monotonic() - t_label
                if protected_s is not None and plugin_s is not None:
                    break
                time.sleep(0.5)
            out["groups_s"] = round(groups_s, 1) if groups_s is not None else "timeout"
            out["plugin_done_s"] = round(plugin_s, 1) if plugin_s is not None else "timeout"
            out["protected_s"] = round(protected_s, 1) if protected_s is not None else "timeout"
            out["protect_writes"] = int(_writes(url) - writes0)
            reads = []
            for _ in range(3):  # `dr-kit protection status` (the table of all namespaces)
                t_read = time.monotonic()
                cli.protection_table(lab_dir=lab)
                reads.append(time.monotonic() - t_read)
            out["status_table_read_s"] = round(sorted(reads)[1], 3)
            time.sleep(5)  # let the last status updates settle
            rvs = {n: core.read_namespace(n).metadata.resource_version for n in names}
            w_idle0, t_idle0 = _writes(url), time.monotonic()
            time.sleep(args.idle)
            idle_s = time.monotonic() - t_idle0
            out["idle_writes_per_s"] = round((_writes(url) - w_idle0) / idle_s, 3)
            out["idle_namespace_rv_changes"] = sum(
                1 for n in names if core.read_namespace(n).metadata.resource_version != rvs[n])
            stop.set()
            out["operator_threads_max"] = peak["threads"]
            out["operator_rss_mb_max"] = round(peak["rss"] / 2**20, 1)
            text = _metrics(url)
            m = re.search(r"^dr_kit_operator_reconciles_total (\S+)", text, re.M)
            out["reconciles"] = int(float(m.group(1))) if m else -1
            ctl = [psutil.Process(LabDir.of(lab).load()["processes"][k]["pid"])
                   for k in ("main-controllers", "backup-controllers")]
            out["controllers_threads"] = "+".join(str(p.num_threads()) for p in ctl)
            out["load_avg_1m"] = round(psutil.getloadavg()[0], 1)
        finally:
            manager.down(lab, purge=True)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
