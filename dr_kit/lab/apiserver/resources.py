"""The kinds the server knows: built-in core/storage/apps kinds and every CRD file.

A :class:`Kind` says where a resource lives (group, served versions, plural, scope),
whether it has the ``status`` subresource, and for custom resources the
``openAPIV3Schema`` of each served version. Objects are stored once per kind; every
served version reads and writes the same object with ``apiVersion`` rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_READ_VERBS = ["get", "list"]


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    versions: tuple[str, ...]  # served versions, preferred first
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    printer_columns: dict[str, list[dict[str, Any]]] = field(default_factory=dict, compare=False)
    categories: tuple[str, ...] = ()
    read_only: bool = False
    selectable_fields: tuple[str, ...] = ()  # beyond metadata.name and metadata.namespace

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: one object set per (group, plural), shared by all versions."""
        return (self.group, self.plural)

    @property
    def preferred_version(self) -> str:
        return self.versions[0]

    @property
    def custom(self) -> bool:
        return bool(self.schemas)

    def api_version(self, version: str | None = None) -> str:
        version = version or self.preferred_version
        return f"{self.group}/{version}" if self.group else version

    def verbs(self) -> list[str]:
        return list(_READ_VERBS if self.read_only else _VERBS)

    @property
    def field_labels(self) -> tuple[str, ...]:
        """The field paths a field selector may use on this kind."""
        return ("metadata.name", "metadata.namespace", *self.selectable_fields)


_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?\Z")


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first.

    Returns a key that sorts the preferred version first.
    """
    m = _VERSION_RE.match(version)
    if not m:
        return (3, 0, 0)
    major, track, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[track]
    return (rank, -major, -minor)


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool,
    short: tuple[str, ...] = (),
    status: bool = False,
    categories: tuple[str, ...] = (),
    fields: tuple[str, ...] = (),
) -> Kind:
    return Kind(
        group=group,
        versions=(version,),
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        short_names=short,
        status_subresource=status,
        categories=categories,
        selectable_fields=fields,
    )


_POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
               "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
               "status.podIPs", "status.nominatedNodeName")
_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                 "involvedObject.uid", "involvedObject.apiVersion",
                 "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                 "reportingComponent", "source", "type")


BUILTIN_KINDS: tuple[Kind, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", False, ("ns",), status=True,
             fields=("status.phase",)),
    _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), True),
    _builtin("", "v1", "persistentvolumes", "PersistentVolume", False, ("pv",), status=True),
    _builtin("", "v1", "pods", "Pod", True, ("po",), status=True, categories=("all",),
             fields=_POD_FIELDS),
    _builtin("", "v1", "events", "Event", True, ("ev",), fields=_EVENT_FIELDS),
    _builtin("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    _builtin("", "v1", "secrets", "Secret", True, fields=("type",)),
    _builtin("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, ("sc",)),
    _builtin("apps", "v1", "deployments", "Deployment", True, ("deploy",), status=True,
             categories=("all",)),
)

CRD_KIND = Kind(
    group="apiextensions.k8s.io",
    versions=("v1",),
    plural="customresourcedefinitions",
    singular="customresourcedefinition",
    kind="CustomResourceDefinition",
    namespaced=False,
    short_names=("crd", "crds"),
    read_only=True,
)


def kind_from_crd(crd: dict[str, Any]) -> Kind:
    """Build a :class:`Kind` from an ``apiextensions.k8s.io/v1`` CRD document."""
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", False)]
    if not served:
        raise ValueError(f"CRD {crd['metadata']['name']} serves no version")
    served.sort(key=lambda v: version_priority(v["name"]))
    schemas = {
        v["name"]: (v.get("schema") or {}).get("openAPIV3Schema")
        or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        for v in served
    }
    columns = {v["name"]: list(v.get("additionalPrinterColumns") or []) for v in served}
    selectable = {
        f["jsonPath"].lstrip(".")
        for v in served
        for f in v.get("selectableFields") or []
        if isinstance(f, dict) and isinstance(f.get("jsonPath"), str)
    }
    return Kind(
        group=spec["group"],
        versions=tuple(v["name"] for v in served),
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        status_subresource=any("status" in (v.get("subresources") or {}) for v in served),
        schemas=schemas,
        printer_columns=columns,
        categories=tuple(names.get("categories") or ()),
        selectable_fields=tuple(sorted(selectable)),
    )


def load_crds(crd_dir: Path = CRD_DIR) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    docs.append(doc)
    return docs


class Registry:
    """Lookup of kinds by (group, version, plural) and the discovery documents."""

    def __init__(self, kinds: list[Kind], crds: list[dict[str, Any]] | None = None) -> None:
        self.kinds = list(kinds)
        self.crds = list(crds or [])
        self._by_path: dict[tuple[str, str, str], Kind] = {}
        self._by_key: dict[tuple[str, str], Kind] = {}
        for k in self.kinds:
            if k.key in self._by_key:
                raise ValueError(f"duplicate resource {k.plural}.{k.group}")
            self._by_key[k.key] = k
            for v in k.versions:
                self._by_path[(k.group, v, k.plural)] = k

    def lookup(self, group: str, version: str, plural: str) -> Kind | None:
        return self._by_path.get((group, version, plural))

    def by_key(self, key: tuple[str, str]) -> Kind:
        return self._by_key[key]

    def namespaced_kinds(self) -> list[Kind]:
        return [k for k in self.kinds if k.namespaced]

    def group_versions(self, group: str) -> list[str]:
        versions = {v for k in self.kinds if k.group == group for v in k.versions}
        return sorted(versions, key=version_priority)

    def groups(self) -> list[str]:
        """Named API groups (not the core group), in registration order."""
        seen: list[str] = []
        for k in self.kinds:
            if k.group and k.group not in seen:
                seen.append(k.group)
        return seen

    def kinds_in(self, group: str, version: str) -> list[Kind]:
        return [k for k in self.kinds if k.group == group and version in k.versions]


def default_registry(crd_dir: Path = CRD_DIR) -> Registry:
    crds = load_crds(crd_dir)
    kinds = list(BUILTIN_KINDS) + [CRD_KIND] + [kind_from_crd(c) for c in crds]
    return Registry(kinds, crds)
