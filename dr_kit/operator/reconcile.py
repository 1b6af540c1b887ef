"""The namespace operator's decision, as one pure function.

:func:`reconcile` takes what the cluster looks like for one namespace (plain dicts, as the
API returns them) and the policy, and returns a :class:`Plan`: the writes that make the
cluster match "one consistency group covering exactly this namespace's PVCs", the status
annotation for the namespace and the Events worth emitting.  It does no I/O; the runner
applies plans, the tests check them on dicts.

Rules:
- protection is requested by the namespace label ``policy.label_key=policy.label_value``;
  the namespace annotation ``dr-kit.io/backend`` may pick the backend for one namespace;
- a refusal (conflict, unknown storage/replication class, unknown backend, missing CRDs)
  plans **no** writes at all: what exists stays as it was, nothing is half-created;
- names are deterministic and every owned object carries the ownership labels, so a
  restarted operator finds what it made and converges without duplicates;
- applying a plan and reconciling again plans nothing (idempotence);
- removing the label deletes the replication objects and the PVCs' group label; the
  replication classes (shared, cluster-scoped) and the backup-site data stay, unless the
  policy asks to delete the backup data;
- a namespace with more PVCs than one group of its backend holds (:data:`MAX_PVCS`) is
  refused as a whole;
- the status derives from everything the replication resources say
  (:mod:`dr_kit.operator.status`) and holds no moving figure, so it only changes with
  the state;
- a namespace whose DR state (``dr-kit.io/dr-state``) names the other site as primary is
  ``Standby`` here: no writes but its status, and its replication resource here is kept
  secondary (a returning old main is fenced: a resource still saying ``primary`` is
  demoted).  The DR state read at the other site counts too (the newer revision wins), so
  an old main that was down during a failover learns it is no longer primary;
- while a DR operation runs (the state names one) the roles are the operation's: the
  operator changes no resource's replication state at either site.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dr_kit.dr import state as dr_state
from dr_kit.errors import InvalidInput
from dr_kit.labels import SelectorError, match_selector
from dr_kit.operator.backends import (
    OWNER_NAMESPACE_LABEL,
    REQUIRED_KINDS,
    RESOURCES,
    csi_addons,
    hitachi,
    is_owned,
)
from dr_kit.operator.policy import BACKENDS, RESTORED_FROM, Policy, ReplicationClass
from dr_kit.operator.status import (
    DEGRADED,
    PROTECTED,
    PROTECTING,
    REFUSED,
    STANDBY,
    UNPROTECTED,
    WAITING,
    csi_addons_health,
    hitachi_health,
)

BACKEND_ANNOTATION = "dr-kit.io/backend"
# The most PVCs one namespace (one consistency group) may have, per backend, and why.
MAX_PVCS = {"csi-addons": csi_addons.MAX_PVCS, "hitachi": hitachi.MAX_PAIRS}
LIMIT_REASONS = {"csi-addons": csi_addons.LIMIT_REASON, "hitachi": hitachi.LIMIT_REASON}
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"

DR_STATE_ANNOTATION = dr_state.ANNOTATION  # {"primary": "main"|"backup", "rev": N, ...}
SITES = dr_state.SITES
# the replication state of a resource whose copy at this site is the secondary one
SECONDARY_STATE = {"csi-addons": "secondary", "hitachi": "svol"}


@dataclass(frozen=True)
class Ref:
    kind: str
    name: str
    namespace: str | None = None

    @property
    def api_version(self) -> str:
        return RESOURCES[self.kind].api_version

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True)
class Action:
    """One write.  ``create`` carries the whole object, ``patch`` a JSON merge patch."""

    op: Literal["create", "patch", "delete"]
    ref: Ref
    body: dict | None = None

    def __str__(self) -> str:
        return f"{self.op} {self.ref}"


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    namespace: str
    actions: list[Action] = field(default_factory=list)
    status: dict | None = None  # the annotation's content; None = leave it alone
    status_changed: bool = False
    events: list[Event] = field(default_factory=list)
    refusal: str | None = None
    backup_actions: list[Action] = field(default_factory=list)  # at the backup site

    @property
    def changes_nothing(self) -> bool:
        return not self.actions and not self.backup_actions and not self.status_changed

    def status_json(self) -> str | None:
        return None if self.status is None else json.dumps(self.status, sort_keys=True)


class _Refusal(Exception):
    pass


def reconcile(
    namespace: Mapping[str, Any],
    pvcs: Iterable[Mapping[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    storage_classes: Iterable[Mapping[str, Any]],
    policy: Policy,
    *,
    now: datetime | None = None,
    available_kinds: Collection[str] | None = None,
    taken_group_ids: Mapping[int, str] | None = None,
    backup_pvcs: Iterable[Mapping[str, Any]] | None = None,
    backup_site: bool = False,
    site: str = "main",
    peer_annotations: Mapping[str, str] | None = None,
) -> Plan:
    """Plan the writes that bring ``namespace`` to its desired protection.

    ``existing``: replication objects in the namespace (VolumeGroupReplication,
    VolumeReplication, Replication, ReplicationGroup; owned or not) and the cluster's
    VolumeGroupReplicationClasses / VolumeReplicationClasses.  ``available_kinds``: the
    kinds the cluster serves (from discovery); None skips the CRD check.
    ``taken_group_ids``: Hitachi consistency group ids used elsewhere, id -> namespace.
    ``backup_pvcs``: the namespace's PVCs at the other site when observed (None when not).
    ``backup_site``: whether the runner can act on the other site.
    ``site``: which site this operator runs at (``main`` or ``backup``).  When the
    namespace's DR state (annotation ``dr-kit.io/dr-state``, ``{"primary": ...}``; no
    annotation = ``main``) names the other site as primary, nothing is created or patched
    here but the replication state of its own resource (kept secondary: fencing);
    protection runs from the primary site.  Unprotecting works at either site.
    ``peer_annotations``: the namespace's annotations at the other site when observed
    (their DR state counts when its revision is newer).
    """
    now = now or datetime.now(UTC)
    ns_name = namespace["metadata"]["name"]
    ctx = _Context(
        ns=ns_name,
        labels=dict(namespace["metadata"].get("labels") or {}),
        annotations=dict(namespace["metadata"].get("annotations") or {}),
        pvcs=[p for p in pvcs if p["metadata"].get("namespace", ns_name) == ns_name],
        existing=list(existing),
        storage_classes={sc["metadata"]["name"]: sc for sc in storage_classes},
        policy=policy,
        now=now,
        available_kinds=None if available_kinds is None else set(available_kinds),
        taken_group_ids=dict(taken_group_ids or {}),
        backup_pvcs=None if backup_pvcs is None else list(backup_pvcs),
        backup_site=backup_site,
        site=site,
        peer_annotations=dict(peer_annotations) if peer_annotations is not None else None,
    )
    plan = Plan(namespace=ns_name)
    if namespace["metadata"].get("deletionTimestamp"):
        return plan  # everything namespaced goes with it; nothing to say
    if ctx.labels.get(policy.label_key) == policy.label_value:
        try:
            primary, busy = _dr_roles(ctx)
            ctx.dr_busy = busy
            if primary != site:
                _standby(ctx, plan, primary)
            else:
                _protect(ctx, plan)
        except _Refusal as refusal:
            plan.actions.clear()
            plan.refusal = str(refusal)
            _set_status(ctx, plan, REFUSED, str(refusal), level="Warning",
                        reason="ProtectionRefused")
    else:
        _unprotect(ctx, plan)
    return plan


def primary_site(annotations: Mapping[str, str]) -> str:
    """The namespace's primary site from its DR state (``main`` when none is recorded).

    Raises a refusal for a DR state that cannot be read: acting on a guess could
    replicate in the wrong direction.
    """
    raw = annotations.get(DR_STATE_ANNOTATION)
    if raw is None:
        return "main"
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    primary = value.get("primary") if isinstance(value, dict) else None
    if primary not in SITES:
        raise _Refusal(f"annotation {DR_STATE_ANNOTATION} is unreadable ({str(raw)[:80]!r}); "
                       f"it must be JSON like {{\"primary\": \"main\"}} with primary one of "
                       f"{', '.join(SITES)}; nothing is created until it is fixed")
    return str(primary)


def _dr_roles(ctx: _Context) -> tuple[str, bool]:
    """(primary site, DR operation running) from this site's and the other site's DR state."""
    primary_site(ctx.annotations)  # an unreadable annotation here is refused as it always was
    try:
        return dr_state.primary_of(ctx.annotations, ctx.peer_annotations)
    except InvalidInput as e:
        raise _Refusal(f"{e}; nothing is created until it is fixed") from None


# -- internals ----------------------------------------------------------------------------


@dataclass
class _Context:
    ns: str
    labels: dict
    annotations: dict
    pvcs: list
    existing: list
    storage_classes: dict
    policy: Policy
    now: datetime
    available_kinds: set | None
    taken_group_ids: dict
    backup_pvcs: list | None
    backup_site: bool
    site: str = "main"
    peer_annotations: dict | None = None
    dr_busy: bool = False  # a DR operation runs: replication states are the operation's

    @property
    def previous(self) -> dict | None:
        return read_status(self.annotations, self.policy)

    def of_kind(self, kind: str, *, owned: bool | None = None) -> list[dict]:
        res = RESOURCES[kind]
        out = []
        for obj in self.existing:
            if obj.get("kind") != kind:
                continue
            md = obj.get("metadata", {})
            if res.namespaced and md.get("namespace", self.ns) != self.ns:
                continue
            if owned is not None and is_owned(obj) != owned:
                continue
            if owned and (md.get("labels") or {}).get(OWNER_NAMESPACE_LABEL, self.ns) != self.ns:
                continue
            out.append(obj)
        return out

    def find(self, kind: str, name: str) -> dict | None:
        res = RESOURCES[kind]
        for obj in self.existing:
            md = obj.get("metadata", {})
            if obj.get("kind") == kind and md.get("name") == name and (
                    not res.namespaced or md.get("namespace", self.ns) == self.ns):
                return obj
        return None


def _protect(ctx: _Context, plan: Plan) -> None:
    policy = ctx.policy
    backend = ctx.annotations.get(BACKEND_ANNOTATION, policy.backend)
    if backend not in BACKENDS:
        raise _Refusal(f"unknown backend {backend!r} (annotation {BACKEND_ANNOTATION}); "
                       f"choose one of {', '.join(BACKENDS)}")
    if backend not in policy.backends:
        raise _Refusal(f"backend {backend!r} (annotation {BACKEND_ANNOTATION}) is not enabled "
                       f"in the operator policy (allowed_backends: "
                       f"{', '.join(policy.backends)})")
    _check_kinds(ctx, REQUIRED_KINDS[backend])
    group = policy.group_name(ctx.ns)
    # restored snapshot groups (an analyst's clones) live beside the application's PVCs at
    # the backup site: never members, also when that site becomes the primary one
    clones = [p for p in ctx.pvcs if (p["metadata"].get("labels") or {}).get(RESTORED_FROM)]
    live = sorted((p for p in ctx.pvcs if not p["metadata"].get("deletionTimestamp")
                   and p not in clones), key=lambda p: p["metadata"]["name"])
    limit = MAX_PVCS[backend]
    if len(live) > limit:
        raise _Refusal(f"the namespace has {len(live)} PVCs and one consistency group of the "
                       f"{backend} backend holds at most {limit} ({LIMIT_REASONS[backend]}); "
                       f"move PVCs to another namespace (each namespace is one group)")
    _check_conflicts(ctx, live, group)
    sc_of = {p["metadata"]["name"]: _storage_class_of(ctx, p) for p in live}

    if backend == "csi-addons":
        _protect_csi_addons(ctx, plan, live, sc_of, group)
    else:
        _protect_hitachi(ctx, plan, live, sc_of, group)

    names = [p["metadata"]["name"] for p in live]
    # PVC group labels: the selector of a VolumeGroupReplication, a label to find the
    # group's PVCs by for everything else.
    label_patches = [
        Action("patch", Ref("PersistentVolumeClaim", n, ctx.ns),
               {"metadata": {"labels": {policy.group_label_key: group}}})
        for n, p in ((p["metadata"]["name"], p) for p in live)
        if (p["metadata"].get("labels") or {}).get(policy.group_label_key) != group
    ] + [  # a clone that carries the group label would match the group's selector
        Action("patch", Ref("PersistentVolumeClaim", p["metadata"]["name"], ctx.ns),
               {"metadata": {"labels": {policy.group_label_key: None}}})
        for p in clones if policy.group_label_key in (p["metadata"].get("labels") or {})
    ]
    # group objects are created after their members are labelled, deletions come first
    creates = [a for a in plan.actions if a.op != "delete"]
    deletes = [a for a in plan.actions if a.op == "delete"]
    classes = [a for a in creates if a.ref.kind.endswith("Class")]
    others = [a for a in creates if not a.ref.kind.endswith("Class")]
    plan.actions[:] = deletes + classes + label_patches + others

    _protect_status(ctx, plan, backend, group, names)


def _check_kinds(ctx: _Context, kinds: Iterable[str]) -> None:
    if ctx.available_kinds is None:
        return
    missing = [RESOURCES[k].crd_name or k for k in kinds if k not in ctx.available_kinds]
    if missing:
        raise _Refusal(f"missing CRDs on the cluster: {', '.join(missing)}; install them "
                       f"(the storage vendor's replication operator) and the namespace "
                       f"will be protected")


def _check_conflicts(ctx: _Context, live: list[dict], group: str) -> None:
    key = ctx.policy.group_label_key
    problems = []
    foreign_vgrs = ctx.of_kind("VolumeGroupReplication", owned=False)
    foreign_vrs = ctx.of_kind("VolumeReplication", owned=False)
    foreign_hrs = ctx.of_kind("Replication", owned=False)
    for pvc in live:
        name = pvc["metadata"]["name"]
        labels = dict(pvc["metadata"].get("labels") or {})
        if labels.get(key) not in (None, group):
            problems.append(f"PVC {name} is labelled {key}={labels[key]} (another group)")
            continue
        labels[key] = group
        for vgr in foreign_vgrs:
            refs = {r.get("name") for r in
                    (vgr.get("status") or {}).get("persistentVolumeClaimsRefList") or []}
            selector = ((vgr.get("spec") or {}).get("source") or {}).get("selector")
            if name in refs or (selector is not None and selector_matches(selector, labels)):
                problems.append(f"PVC {name} is already in VolumeGroupReplication "
                                f"{vgr['metadata']['name']}")
        for vr in foreign_vrs:
            src = (vr.get("spec") or {}).get("dataSource") or {}
            if src.get("kind", "PersistentVolumeClaim") == "PersistentVolumeClaim" and \
                    src.get("name") == name:
                problems.append(f"PVC {name} is already replicated by VolumeReplication "
                                f"{vr['metadata']['name']}")
        for hr in foreign_hrs:
            if (hr.get("spec") or {}).get("persistentVolumeClaimName") == name:
                problems.append(f"PVC {name} is already replicated by Replication "
                                f"{hr['metadata']['name']}")
    if problems:
        raise _Refusal("; ".join(problems) + "; a PVC can be in one consistency group only")


def _storage_class_of(ctx: _Context, pvc: dict) -> dict:
    name = pvc["metadata"]["name"]
    sc_name = (pvc.get("spec") or {}).get("storageClassName")
    if sc_name is None:
        defaults = sorted(n for n, sc in ctx.storage_classes.items()
                          if (sc["metadata"].get("annotations") or {})
                          .get(DEFAULT_CLASS_ANNOTATION) == "true")
        if not defaults:
            raise _Refusal(f"PVC {name} names no storage class and the cluster has no default")
        sc_name = defaults[0]
    if sc_name == "":
        raise _Refusal(f"PVC {name} is bound to a static PV (storageClassName \"\"); "
                       f"the operator cannot replicate it")
    sc = ctx.storage_classes.get(sc_name)
    if sc is None:
        raise _Refusal(f"PVC {name} uses storage class {sc_name}, which does not exist")
    return sc


def _replication_class_for(ctx: _Context, sc: dict, pvc_name: str) -> tuple[ReplicationClass,
                                                                              str]:
    """(replication class, provisioner) for a storage class, or a refusal."""
    sc_name = sc["metadata"]["name"]
    provisioner = sc.get("provisioner", "")
    rc = ctx.policy.storage_classes.get(sc_name)
    if rc is not None:
        return rc, rc.provisioner or provisioner
    for vgrc in sorted(ctx.of_kind("VolumeGroupReplicationClass"),
                       key=lambda o: o["metadata"]["name"]):
        if (vgrc.get("spec") or {}).get("provisioner") == provisioner:
            return ReplicationClass(name=vgrc["metadata"]["name"]), provisioner
    raise _Refusal(f"storage class {sc_name} (PVC {pvc_name}) has no replication class: map it "
                   f"in the operator policy (storage_classes) or create a "
                   f"VolumeGroupReplicationClass for provisioner {provisioner or '?'}")


def _protect_csi_addons(ctx: _Context, plan: Plan, live: list[dict], sc_of: dict,
                        group: str) -> None:
    owned_vgr = ctx.find("VolumeGroupReplication", group)
    if owned_vgr is not None and not is_owned(owned_vgr):
        raise _Refusal(f"a VolumeGroupReplication named {group} exists and is not the "
                       f"operator's; rename or delete it")
    if not live:
        if owned_vgr is not None:
            plan.actions.append(Action("delete", Ref("VolumeGroupReplication", group, ctx.ns)))
        return
    chosen: dict[str, tuple[ReplicationClass, str]] = {}
    for pvc in live:
        name = pvc["metadata"]["name"]
        rc, prov = _replication_class_for(ctx, sc_of[name], name)
        chosen[name] = (rc, prov)
    distinct = sorted({(rc.name, prov) for rc, prov in chosen.values()})
    if len(distinct) > 1:
        listing = ", ".join(f"{n}: {rc.name}" for n, (rc, _) in sorted(chosen.items()))
        raise _Refusal(f"the PVCs need different replication classes ({listing}); one "
                       f"consistency group needs one replication class")
    rc, provisioner = next(iter(chosen.values()))
    if rc.volume_replication_class:
        _check_kinds(ctx, ["VolumeReplicationClass"])

    desired = csi_addons.volume_group_replication(ctx.policy, ctx.ns, rc.name,
                                                  rc.volume_replication_class)
    if owned_vgr is not None:
        have = owned_vgr.get("spec") or {}
        for key in ("volumeGroupReplicationClassName", "volumeReplicationClassName"):
            if have.get(key) != desired["spec"].get(key):
                raise _Refusal(
                    f"VolumeGroupReplication {group} has {key}={have.get(key)!r} but the "
                    f"policy now says {desired['spec'].get(key)!r}; it is immutable: remove "
                    f"the label, wait for Unprotected, and label the namespace again")
        if have.get("source") != desired["spec"]["source"]:
            raise _Refusal(f"VolumeGroupReplication {group} selects "
                           f"{have.get('source')!r}, not the operator's group label; "
                           f"remove the label and label the namespace again")

    existing_class = ctx.find("VolumeGroupReplicationClass", rc.name)
    if existing_class is None:
        plan.actions.append(Action(
            "create", Ref("VolumeGroupReplicationClass", rc.name),
            csi_addons.volume_group_replication_class(rc.name, provisioner, rc.parameters,
                                                      ctx.ns)))
    elif (existing_class.get("spec") or {}).get("provisioner") != provisioner:
        raise _Refusal(f"VolumeGroupReplicationClass {rc.name} has provisioner "
                       f"{existing_class['spec'].get('provisioner')}, not {provisioner}")
    if rc.volume_replication_class and \
            ctx.find("VolumeReplicationClass", rc.volume_replication_class) is None:
        plan.actions.append(Action(
            "create", Ref("VolumeReplicationClass", rc.volume_replication_class),
            csi_addons.volume_replication_class(rc.volume_replication_class, provisioner,
                                                rc.parameters, ctx.ns)))

    if owned_vgr is None:
        plan.actions.append(Action("create", Ref("VolumeGroupReplication", group, ctx.ns),
                                   desired))
    else:
        keys = ("autoResync",) if ctx.dr_busy else ("replicationState", "autoResync")
        patch = {k: v for k, v in desired["spec"].items()
                 if k in keys and (owned_vgr.get("spec") or {}).get(k) != v}
        if patch:
            plan.actions.append(Action("patch", Ref("VolumeGroupReplication", group, ctx.ns),
                                       {"spec": patch}))


def _group_id(ctx: _Context, group: str) -> int:
    policy = ctx.policy
    owned = ctx.of_kind("ReplicationGroup", owned=True) + ctx.of_kind("Replication", owned=True)
    for obj in owned:
        raw = (obj["metadata"].get("labels") or {}).get(hitachi.GROUP_ID_LABEL)
        if raw is not None and raw.isdigit():
            return int(raw)
    taken = {i: ns for i, ns in ctx.taken_group_ids.items() if ns != ctx.ns}
    pinned = policy.hitachi.namespace_group_ids.get(ctx.ns)
    if pinned is not None:
        if pinned in taken:
            raise _Refusal(f"consistency group id {pinned} (pinned in the policy) is used by "
                           f"namespace {taken[pinned]}")
        return pinned
    lo, hi = policy.hitachi.consistency_group_ids
    for candidate in range(lo, hi + 1):
        if candidate not in taken:
            return candidate
    raise _Refusal(f"no free consistency group id in {lo}..{hi}; widen "
                   f"hitachi.consistency_group_ids in the policy")


def _protect_hitachi(ctx: _Context, plan: Plan, live: list[dict], sc_of: dict,
                     group: str) -> None:
    policy = ctx.policy
    for pvc in live:
        sc_name = sc_of[pvc["metadata"]["name"]]["metadata"]["name"]
        if sc_name not in policy.storage_classes:
            raise _Refusal(f"storage class {sc_name} (PVC {pvc['metadata']['name']}) has no "
                           f"replication class: map it in the operator policy "
                           f"(storage_classes)")
    rg = ctx.find("ReplicationGroup", group)
    if rg is not None and not is_owned(rg):
        raise _Refusal(f"a ReplicationGroup named {group} exists and is not the operator's")
    owned_reps = {o["metadata"]["name"]: o for o in ctx.of_kind("Replication", owned=True)}
    if not live:
        plan.actions.extend(Action("delete", Ref("Replication", n, ctx.ns))
                            for n in sorted(owned_reps))
        if rg is not None:
            plan.actions.append(Action("delete", Ref("ReplicationGroup", group, ctx.ns)))
        return
    gid = _group_id(ctx, group)

    want_rg = hitachi.replication_group(policy, ctx.ns, gid)
    if rg is None:
        plan.actions.append(Action("create", Ref("ReplicationGroup", group, ctx.ns), want_rg))
    elif (rg.get("spec") or {}).get("desiredPairState") != want_rg["spec"]["desiredPairState"] \
            and not ctx.dr_busy:
        plan.actions.append(Action("patch", Ref("ReplicationGroup", group, ctx.ns),
                                   {"spec": {"desiredPairState":
                                             want_rg["spec"]["desiredPairState"]}}))
    wanted: dict[str, dict] = {}
    for pvc in live:
        name = pvc["metadata"]["name"]
        body = hitachi.replication(policy, ctx.ns, name, sc_of[name]["metadata"]["name"], gid)
        wanted[body["metadata"]["name"]] = body
    for rname, body in wanted.items():
        have = ctx.find("Replication", rname)
        if have is None:
            plan.actions.append(Action("create", Ref("Replication", rname, ctx.ns), body))
        elif not is_owned(have):
            raise _Refusal(f"a Replication named {rname} exists and is not the operator's")
        else:
            diff = {k: v for k, v in body["spec"].items()
                    if (have.get("spec") or {}).get(k) != v}
            if diff:
                plan.actions.append(Action("patch", Ref("Replication", rname, ctx.ns),
                                           {"spec": diff}))
    for rname in sorted(set(owned_reps) - set(wanted)):
        plan.actions.append(Action("delete", Ref("Replication", rname, ctx.ns)))


def _unprotect(ctx: _Context, plan: Plan) -> None:
    policy = ctx.policy
    group = policy.group_name(ctx.ns)
    owned: list[dict] = []
    for kind in ("VolumeGroupReplication", "Replication", "ReplicationGroup"):
        owned += ctx.of_kind(kind, owned=True)
    # replication objects first (the group last), then the PVCs' labels
    order = {"Replication": 0, "VolumeGroupReplication": 1, "ReplicationGroup": 2}
    owned.sort(key=lambda o: (order[o["kind"]], o["metadata"]["name"]))
    plan.actions.extend(Action("delete", Ref(o["kind"], o["metadata"]["name"], ctx.ns))
                        for o in owned)
    labelled = sorted(p["metadata"]["name"] for p in ctx.pvcs
                      if (p["metadata"].get("labels") or {}).get(policy.group_label_key)
                      == group)
    plan.actions.extend(
        Action("patch", Ref("PersistentVolumeClaim", n, ctx.ns),
               {"metadata": {"labels": {policy.group_label_key: None}}}) for n in labelled)

    prev = ctx.previous
    if prev is None and not plan.actions:
        return  # a namespace the operator never touched: no annotation, no event
    members = sorted(set(labelled) | set((prev or {}).get("pvcs") or []))
    value = ctx.labels.get(policy.label_key)
    if value is not None:
        why = (f"label {policy.label_key}={value} is not {policy.label_value}; "
               f"replication removed")
    else:
        why = "replication removed"
    try:
        primary_here = primary_site(ctx.annotations) == ctx.site
    except _Refusal:
        primary_here = False
    if policy.delete_backup_on_unprotect and plan.actions and not primary_here:
        why += (f"; data at the other site KEPT: the {ctx.site} site is not the namespace's "
                f"primary ({DR_STATE_ANNOTATION}), so the other site holds the production data")
    elif policy.delete_backup_on_unprotect and plan.actions:
        if ctx.backup_site:
            plan.backup_actions.extend(Action("delete", Ref("PersistentVolumeClaim", n, ctx.ns))
                                       for n in members)
            why += "; backup data deleted as the policy asks"
        else:
            why += ("; backup data KEPT: the policy asks to delete it but the operator "
                    "has no backup-site context (--backup-context)")
            plan.events.append(Event("Warning", "BackupDataKept", why))
    else:
        why += "; backup data kept at the backup site"
    if prev is not None and prev.get("state") == UNPROTECTED and not plan.actions:
        return
    _set_status(ctx, plan, UNPROTECTED, why, reason="Unprotected", pvcs=[],
                backend=None, group=None, level="Normal")


def _protect_status(ctx: _Context, plan: Plan, backend: str, group: str,
                    names: list[str]) -> None:
    if not names:
        _set_status(ctx, plan, WAITING,
                    "no PVCs in the namespace yet; it will be protected once a PVC appears",
                    backend=backend, group={"name": group, "id": None}, pvcs=[],
                    reason="WaitingForPVCs")
        return
    gid = None
    if backend == "csi-addons":
        vgr = ctx.find("VolumeGroupReplication", group)
        creating = any(a.op == "create" and a.ref.kind == "VolumeGroupReplication"
                       for a in plan.actions)
        health = csi_addons_health(None if creating else vgr, names)
        lag_source = "VolumeGroupReplication status.lastSyncTime (upper bound, 1 s resolution)"
    else:
        reps = {n: ctx.find("Replication", hitachi.replication_name(ctx.policy, ctx.ns, n))
                for n in names}
        rg = ctx.find("ReplicationGroup", group)
        health = hitachi_health(reps, rg)
        lag_source = "Replication status.timeLagSeconds"
        gid_raw = ((rg or {}).get("metadata", {}).get("labels") or {}).get(
            hitachi.GROUP_ID_LABEL)
        gid = int(gid_raw) if gid_raw and gid_raw.isdigit() else None
        for a in plan.actions:  # a group about to be created: its id is decided already
            if a.ref.kind == "ReplicationGroup" and a.op == "create" and a.body:
                gid = int(a.body["metadata"]["labels"][hitachi.GROUP_ID_LABEL])
    state, reason, message = health.state, health.reason, health.message
    if plan.actions and state == PROTECTED:  # members change in this pass
        state, reason = PROTECTING, "Updating"
        message = "the group's members change; waiting for the storage plugin"

    backup = None
    if ctx.backup_pvcs is not None:
        phases = {p["metadata"]["name"]: (p.get("status") or {}).get("phase")
                  for p in ctx.backup_pvcs}
        not_bound = [n for n in names if phases.get(n) != "Bound"]
        backup = {"bound": len(names) - len(not_bound), "of": len(names),
                  "notBound": {n: phases.get(n) for n in not_bound[:10]}}
        if state == PROTECTED and not_bound:
            state, reason = PROTECTING, "WaitingForBackup"
            message = (f"replicating; waiting for the backup-site PVCs to be bound "
                       f"({len(not_bound)} of {len(names)} not yet)")
    _set_status(ctx, plan, state, message, backend=backend,
                group={"name": group, "id": gid}, pvcs=names,
                replication=health.summary, backup=backup, reason=reason,
                lag_source=lag_source, event_reason=state,
                level="Warning" if state == DEGRADED else "Normal")


def _standby(ctx: _Context, plan: Plan, primary: str) -> None:
    """The other site is primary for this namespace: report, create nothing; a resource of
    its own still saying this site's copy is the primary one is demoted (fencing)."""
    if not ctx.dr_busy:
        vgr = ctx.find("VolumeGroupReplication", ctx.policy.group_name(ctx.ns))
        if vgr is not None and is_owned(vgr) and \
                (vgr.get("spec") or {}).get("replicationState", "primary") == "primary":
            plan.actions.append(Action("patch", Ref("VolumeGroupReplication", vgr["metadata"]["name"],
                                                    ctx.ns),
                                       {"spec": {"replicationState": SECONDARY_STATE["csi-addons"]}}))
        rg = ctx.find("ReplicationGroup", ctx.policy.group_name(ctx.ns))
        if rg is not None and is_owned(rg) and \
                (rg.get("spec") or {}).get("desiredPairState") not in (SECONDARY_STATE["hitachi"],
                                                                       "resync"):
            plan.actions.append(Action("patch", Ref("ReplicationGroup", rg["metadata"]["name"], ctx.ns),
                                       {"spec": {"desiredPairState": SECONDARY_STATE["hitachi"]}}))
        if plan.actions:
            plan.events.append(Event("Warning", "Fenced",
                                     f"the {primary} site is primary: the replication here is made "
                                     f"secondary, its volumes refuse writes"))
    prev = ctx.previous or {}
    _set_status(ctx, plan, STANDBY,
                f"the {primary} site is primary for this namespace ({DR_STATE_ANNOTATION}); "
                f"protection runs from there, nothing is created or changed at the "
                f"{ctx.site} site", reason="Standby", backend=prev.get("backend"),
                group=prev.get("group"), pvcs=prev.get("pvcs") or [])


STATUS_BUDGET = 64 * 1024  # bytes of the status annotation (Kubernetes allows 256 KiB in all)


def _set_status(ctx: _Context, plan: Plan, state: str, message: str, *, reason: str,
                level: Literal["Normal", "Warning"] = "Normal", backend: str | None = None,
                group: dict | None = None,
                pvcs: list[str] | None = None, replication: dict | None = None,
                backup: dict | None = None, lag_source: str | None = None,
                event_reason: str | None = None) -> None:
    """The status annotation holds facts that change with the state, never a moving figure
    (lag, last sync time): rewriting it on every sync would be a write per second per
    namespace.  Readers compute the lag from the replication resources
    (:func:`dr_kit.operator.status.lag_of`)."""
    prev = ctx.previous or {}
    status: dict[str, Any] = {
        "state": state,
        "reason": reason,
        "message": message,
        "backend": backend,
        "group": group,
        "pvcs": pvcs if pvcs is not None else [],
        "replication": replication or None,
        "lagSource": lag_source,
        "backup": backup,
    }
    if state == REFUSED:  # keep showing what is protected while a change is refused
        for key in ("backend", "group", "pvcs", "replication", "lagSource", "backup"):
            status[key] = prev.get(key)
        status["pvcs"] = status["pvcs"] or []
    status["pvcCount"] = len(status["pvcs"])
    if len(json.dumps(status)) > STATUS_BUDGET:  # thousands of PVCs: count them, not list
        status["pvcs"] = None
    same_state = prev.get("state") == state and prev.get("message") == message
    status["since"] = prev.get("since") if same_state and prev.get("since") else _rfc3339(
        ctx.now)
    plan.status = status
    plan.status_changed = status != prev
    plan.events.extend(_action_events(ctx, plan.actions))
    if not same_state:
        plan.events.append(Event(level, event_reason or reason, f"{state}: {message}"))


def _action_reason(a: Action) -> str:
    return {"create": "Created", "patch": "Updated", "delete": "Deleted"}[a.op]


def _action_events(ctx: _Context, actions: list[Action]) -> list[Event]:
    """One Event per object written, except PVCs: one per pass for those joining and one for
    those leaving the group (a namespace of 100 PVCs gets 1 Event, not 100)."""
    events = [Event("Normal", _action_reason(a), f"{_action_reason(a).lower()} {a.ref}")
              for a in actions if a.ref.kind != "PersistentVolumeClaim"]
    moved: dict[bool, list[str]] = {True: [], False: []}
    for a in actions:
        if a.ref.kind == "PersistentVolumeClaim" and a.op == "patch":
            labels = (a.body or {}).get("metadata", {}).get("labels", {})
            moved[labels.get(ctx.policy.group_label_key) is not None].append(a.ref.name)
    for joined, names in moved.items():
        if names:
            listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more"
                                              if len(names) > 20 else "")
            events.append(Event("Normal", "Updated",
                                f"PVC{'s' if len(names) > 1 else ''} {listed} "
                                f"{'joined' if joined else 'left'} consistency group "
                                f"{ctx.policy.group_name(ctx.ns)}"))
    return events


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_status(annotations: Mapping[str, str], policy: Policy) -> dict | None:
    """The protection status the operator last wrote on a namespace (None if none or unreadable)."""
    raw = annotations.get(policy.status_annotation)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics: matchLabels AND matchExpressions; ``{}`` = all.
    A selector with an unknown operator selects nothing."""
    try:
        return match_selector(selector, labels)
    except SelectorError:
        return False


__all__ = ["Action", "Event", "Plan", "Ref", "reconcile", "selector_matches", "primary_site",
           "read_status", "UNPROTECTED", "WAITING", "REFUSED", "PROTECTING", "PROTECTED",
           "DEGRADED", "STANDBY", "BACKEND_ANNOTATION", "DR_STATE_ANNOTATION", "MAX_PVCS"]
