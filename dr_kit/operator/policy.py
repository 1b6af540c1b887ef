"""The namespace operator's policy: what "protect this namespace" turns into.

One frozen value, loaded from a YAML/JSON file (``--policy FILE``, or the ConfigMap that
``dr-kit operator manifests`` renders) or built in code.  Everything the reconcile function
needs to decide lives here; nothing in it is read from the environment.

The default policy fits the lab: storage class ``lab-array`` replicates through a
VolumeGroupReplicationClass ``dr-kit-lab-array`` whose provisioner is the storage class's
own provisioner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from dr_kit.errors import InvalidInput

BACKENDS = ("csi-addons", "hitachi")

DEFAULT_LABEL_KEY = "dr-kit.io/backup"
DEFAULT_LABEL_VALUE = "ConsistentCopyToCloud"
MANAGED_BY = "dr-kit-operator"  # value of app.kubernetes.io/managed-by on every owned object
# on a PVC restored from a snapshot group (its name): an analyst's clone, never a member of
# the namespace's consistency group
RESTORED_FROM = "dr-kit.io/restored-from"


@dataclass(frozen=True)
class ReplicationClass:
    """How PVCs of one storage class replicate (csi-addons backend).

    ``provisioner=None`` means "the storage class's own provisioner", which is what a CSI
    driver with replication support expects.  ``volume_replication_class`` is the optional
    VolumeReplicationClass that a VolumeGroupReplication names; it is created with the
    same provisioner and parameters when missing.
    """

    name: str
    provisioner: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    volume_replication_class: str | None = None


@dataclass(frozen=True)
class HitachiSettings:
    """Hitachi Replication Plug-in for Containers (``hspc.hitachi.com``) settings.

    Every protected namespace gets one consistency group id from
    ``consistency_group_ids`` (the lowest one no other namespace uses, kept for the
    namespace's lifetime) unless ``namespace_group_ids`` pins one.  Copy group and pair
    names are built from the templates and shortened to ``name_max`` characters (the array
    limits them) with a stable hash suffix when too long.
    """

    pvol_journal_id: int = 0
    svol_journal_id: int = 0
    consistency_group_ids: tuple[int, int] = (0, 255)  # inclusive range
    namespace_group_ids: Mapping[str, int] = field(default_factory=dict)
    copy_group_template: str = "drkit-{namespace}"
    copy_pair_template: str = "{pvc}"
    name_max: int = 29
    fence_level: str | None = None  # the plug-in's default when None
    desired_pair_state: str = "pair"


@dataclass(frozen=True)
class Policy:
    label_key: str = DEFAULT_LABEL_KEY
    label_value: str = DEFAULT_LABEL_VALUE
    backend: str = "csi-addons"
    # Backends a namespace may choose with the annotation dr-kit.io/backend; the RBAC rules
    # cover exactly these.  Empty means only ``backend``.
    allowed_backends: tuple[str, ...] = ()
    # storage class name -> replication class.  A storage class missing here can still be
    # protected (csi-addons) when the cluster already has a VolumeGroupReplicationClass
    # with the storage class's provisioner; otherwise the namespace is refused.
    storage_classes: Mapping[str, ReplicationClass] = field(
        default_factory=lambda: {"lab-array": ReplicationClass(name="dr-kit-lab-array")}
    )
    hitachi: HitachiSettings = field(default_factory=HitachiSettings)
    group_label_key: str = "dr-kit.io/consistency-group"  # put on every protected PVC
    status_annotation: str = "dr-kit.io/protection-status"
    replication_state: str = "primary"
    auto_resync: bool = False
    delete_backup_on_unprotect: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInput(
                f"unknown operator backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        for b in self.allowed_backends:
            if b not in BACKENDS:
                raise InvalidInput(f"unknown backend {b!r} in allowed_backends; choose from "
                                   f"{', '.join(BACKENDS)}")
        if not self.label_key or not self.label_value:
            raise InvalidInput("the protection label key and value must not be empty")
        if self.replication_state not in ("primary", "secondary", "resync"):
            raise InvalidInput(f"replication_state {self.replication_state!r} is not one of "
                               f"primary, secondary, resync")
        lo, hi = self.hitachi.consistency_group_ids
        if lo > hi or lo < 0:
            raise InvalidInput(f"hitachi consistency_group_ids range {lo}..{hi} is empty")

    @property
    def backends(self) -> tuple[str, ...]:
        """Every backend this operator may use: the default first."""
        return (self.backend, *(b for b in self.allowed_backends if b != self.backend))

    # -- naming: one place -------------------------------------------------------------

    def group_name(self, namespace: str) -> str:
        """Name of the namespace's consistency group (VGR name and PVC group label value)."""
        return short_name(f"dr-kit-{namespace}", 63)

    def copy_group_name(self, namespace: str) -> str:
        return short_name(self.hitachi.copy_group_template.format(namespace=namespace),
                          self.hitachi.name_max)

    def copy_pair_name(self, namespace: str, pvc: str) -> str:
        return short_name(self.hitachi.copy_pair_template.format(namespace=namespace, pvc=pvc),
                          self.hitachi.name_max)

    # -- loading ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Policy:
        """Build a policy from plain data (the YAML file); unknown keys are refused."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"unknown policy key(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "storage_classes":
                kwargs[key] = {sc: _replication_class(sc, spec) for sc, spec in
                               (value or {}).items()}
            elif key == "hitachi":
                kwargs[key] = _hitachi(value or {})
            elif key == "allowed_backends":
                kwargs[key] = tuple(value or ())
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidInput(f"cannot read policy file {path}: {exc.strerror}") from None
        try:
            return cls.from_dict(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise InvalidInput(f"policy file {path} is not valid YAML: {exc}") from None
        except TypeError as exc:
            raise InvalidInput(f"policy file {path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "storage_classes":
                value = {sc: {"name": rc.name, "provisioner": rc.provisioner,
                              "parameters": dict(rc.parameters),
                              "volume_replication_class": rc.volume_replication_class}
                         for sc, rc in value.items()}
            elif f.name == "hitachi":
                value = {h.name: getattr(value, h.name) for h in fields(value)}
                value["consistency_group_ids"] = list(value["consistency_group_ids"])
                value["namespace_group_ids"] = dict(value["namespace_group_ids"])
            elif f.name == "allowed_backends":
                value = list(value)
            out[f.name] = value
        return out

    def with_(self, **changes: Any) -> Policy:
        return replace(self, **changes)


def short_name(name: str, limit: int) -> str:
    """``name`` if it fits in ``limit`` characters, else a prefix plus a stable hash."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def _replication_class(storage_class: str, spec: Any) -> ReplicationClass:
    if isinstance(spec, str):
        return ReplicationClass(name=spec)
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise InvalidInput(f"storage_classes.{storage_class} needs at least a 'name'")
    params = {str(k): str(v) for k, v in (spec.get("parameters") or {}).items()}
    extra = sorted(set(spec) - {"name", "provisioner", "parameters", "volume_replication_class"})
    if extra:
        raise InvalidInput(f"storage_classes.{storage_class}: unknown key(s) {', '.join(extra)}")
    return ReplicationClass(name=spec["name"], provisioner=spec.get("provisioner"),
                            parameters=params,
                            volume_replication_class=spec.get("volume_replication_class"))


def _hitachi(data: Mapping[str, Any]) -> HitachiSettings:
    known = {f.name for f in fields(HitachiSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(f"unknown hitachi policy key(s): {', '.join(unknown)}")
    kwargs = dict(data)
    if "consistency_group_ids" in kwargs:
        lo, hi = kwargs["consistency_group_ids"]
        kwargs["consistency_group_ids"] = (int(lo), int(hi))
    return HitachiSettings(**kwargs)


__all__ = ["BACKENDS", "DEFAULT_LABEL_KEY", "DEFAULT_LABEL_VALUE", "MANAGED_BY",
           "HitachiSettings", "Policy", "ReplicationClass", "short_name"]
