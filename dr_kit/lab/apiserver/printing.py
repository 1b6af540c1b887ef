"""Server-side printing: the ``meta.k8s.io/v1`` ``Table`` that ``kubectl get`` asks for.

Built-in kinds get a few familiar columns; custom resources get their CRD's
``additionalPrinterColumns`` (simple ``.a.b`` JSON paths; anything fancier prints empty).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Any

from .resources import Kind

Obj = dict[str, Any]
Column = tuple[str, str, Callable[[Obj], Any]]


def _path(obj: Any, path: str) -> Any:
    if not path.startswith(".") or any(ch in path for ch in "[]?@*"):
        return None
    for part in path[1:].split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    then = _parse_time(timestamp)
    if then is None:
        return "<invalid>"
    secs = max(0, int(((now or dt.datetime.now(dt.UTC)) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 3600 * 3:
        return f"{secs // 60}m"
    if secs < 86400 * 2:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


@functools.lru_cache(maxsize=4096)
def _parse_time(timestamp: str) -> dt.datetime | None:
    """An RFC 3339 time (server-set timestamps repeat: parsed once each)."""
    try:
        then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return then if then.tzinfo else then.replace(tzinfo=dt.UTC)


def _get(*path: str) -> Callable[[Obj], Any]:
    def get(obj: Any) -> Any:
        for part in path:
            if not isinstance(obj, dict):
                return None
            obj = obj.get(part)
        return obj

    return get


def _modes(o: Obj) -> str:
    short = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
             "ReadWriteOncePod": "RWOP"}
    return ",".join(short.get(m, m) for m in (o.get("spec") or {}).get("accessModes") or [])


def _claim(o: Obj) -> str:
    ref = (o.get("spec") or {}).get("claimRef") or {}
    return f"{ref.get('namespace')}/{ref.get('name')}" if ref.get("name") else ""


def _ready(o: Obj) -> str:
    st = o.get("status") or {}
    return f"{st.get('readyReplicas') or 0}/{(o.get('spec') or {}).get('replicas', 1)}"


_BUILTIN: dict[tuple[str, str], list[Column]] = {
    ("", "namespaces"): [("Status", "string", _get("status", "phase"))],
    ("", "persistentvolumeclaims"): [
        ("Status", "string", _get("status", "phase")),
        ("Volume", "string", _get("spec", "volumeName")),
        ("Capacity", "string", _get("status", "capacity", "storage")),
        ("Access Modes", "string", _modes),
        ("StorageClass", "string", _get("spec", "storageClassName")),
    ],
    ("", "persistentvolumes"): [
        ("Capacity", "string", _get("spec", "capacity", "storage")),
        ("Access Modes", "string", _modes),
        ("Reclaim Policy", "string", _get("spec", "persistentVolumeReclaimPolicy")),
        ("Status", "string", _get("status", "phase")),
        ("Claim", "string", _claim),
        ("StorageClass", "string", _get("spec", "storageClassName")),
    ],
    ("", "pods"): [("Status", "string", _get("status", "phase"))],
    ("", "events"): [
        ("Type", "string", _get("type")),
        ("Reason", "string", _get("reason")),
        ("Object", "string", lambda o: "{}/{}".format(
            (_path(o, ".involvedObject.kind") or "").lower(), _path(o, ".involvedObject.name"))),
        ("Message", "string", _get("message")),
    ],
    ("", "configmaps"): [("Data", "integer", lambda o: len(o.get("data") or {}))],
    ("", "secrets"): [
        ("Type", "string", _get("type")),
        ("Data", "integer", lambda o: len(o.get("data") or {})),
    ],
    ("storage.k8s.io", "storageclasses"): [
        ("Provisioner", "string", _get("provisioner")),
        ("ReclaimPolicy", "string", _get("reclaimPolicy")),
    ],
    ("apps", "deployments"): [
        ("Ready", "string", _ready),
        ("Up-to-date", "integer", lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
        ("Available", "integer", lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
    ],
}


def _columns(kind: Kind, version: str) -> list[Column]:
    if kind.custom:
        cols: list[Column] = []
        for c in kind.printer_columns.get(version, []):
            if c.get("jsonPath") == ".metadata.creationTimestamp":
                continue
            path = str(c.get("jsonPath") or "")
            simple = path.startswith(".") and not any(ch in path for ch in "[]?@*")
            getter = _get(*path[1:].split(".")) if simple else (lambda o: None)
            cols.append((c["name"], c.get("type", "string"), getter))
        return cols
    return _BUILTIN.get(kind.key, [])


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def table(kind: Kind, version: str, items: list[Obj], resource_version: str,
          include_object: str = "Metadata") -> Obj:
    cols = _columns(kind, version)
    defs = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
    defs += [{"name": n, "type": t, "format": "", "description": "", "priority": 0}
             for n, t, _ in cols]
    defs.append({"name": "Age", "type": "string", "format": "", "description": "", "priority": 0})
    rows = []
    now = dt.datetime.now(dt.UTC)
    for obj in items:
        meta = obj.get("metadata", {})
        cells = [meta.get("name", "")] + [_cell(f(obj)) for _, _, f in cols]
        cells.append(age(meta.get("creationTimestamp"), now))
        row: Obj = {"cells": cells}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": meta}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": defs, "rows": rows}
