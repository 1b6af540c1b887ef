"""What each API verb does to objects, on plain dicts, independent of HTTP.

This is the object lifecycle of the real API server, reduced to what clients observe:
server-set metadata (uid, creationTimestamp, resourceVersion, generation), the
``status`` subresource split, optimistic concurrency, finalizers and
``deletionTimestamp``, namespace termination, defaults and validation. No-op writes are
not stored and produce no watch event, as in the real server.
"""

from __future__ import annotations

import base64
import builtins
import copy
import datetime as dt
import json
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from . import builtin
from . import schema as schemas
from .decode import check_depth
from .errors import ApiError, already_exists, bad_request, conflict, invalid, not_found
from .patch import apply_patch
from .resources import CRD_KIND, Kind, Registry
from .selectors import (
    ObjectPredicate,
    SelectorError,
    UnsupportedField,
    parse_field_selector,
    parse_label_selector,
)
from .store import Change, Obj, Store

NAMESPACES = ("", "namespaces")
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
_SERVER_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                "deletionGracePeriodSeconds")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
MAX_OBJECT_BYTES = 3 * 1024 * 1024  # a stored object's JSON, as the real server's request limit


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def present(kind: Kind, version: str, obj: Obj) -> Obj:
    """The stored object as seen through one served version (apiVersion rewritten)."""
    out = dict(obj)
    out["apiVersion"] = kind.api_version(version)
    out["kind"] = kind.kind
    return out


def _content(kind: Kind, obj: Obj, without_status: bool) -> Obj:
    drop = {"metadata", "apiVersion", "kind"}
    if without_status:
        drop.add("status")
    return {k: v for k, v in obj.items() if k not in drop}


def _meta_sans_rv(obj: Obj) -> Obj:
    return {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}


_DELETE_OPTIONS: dict[str, tuple[type, ...]] = {
    "kind": (str,), "apiVersion": (str,), "gracePeriodSeconds": (int,),
    "preconditions": (dict,), "orphanDependents": (bool,), "propagationPolicy": (str,),
    "dryRun": (list,), "ignoreStoreReadErrorWithClusterBreakingPotential": (bool,),
}


def delete_options(options: Any) -> Obj:
    """A ``DeleteOptions`` body, checked (400 for a wrong shape, as a real server)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise bad_request("the request body must be a DeleteOptions object")
    for key, value in options.items():
        want = _DELETE_OPTIONS.get(key)
        if want is None or value is None:
            continue
        if not isinstance(value, want) or (want == (int,) and isinstance(value, bool)):
            raise bad_request(f"DeleteOptions.{key}: wrong type ({type(value).__name__})")
    pre = options.get("preconditions") or {}
    for key in ("uid", "resourceVersion"):
        if pre.get(key) is not None and not isinstance(pre[key], str):
            raise bad_request(f"DeleteOptions.preconditions.{key} must be a string")
    policy = options.get("propagationPolicy")
    if policy is not None and policy not in ("Orphan", "Background", "Foreground"):
        raise ApiError(422, "Invalid", f'DeleteOptions is invalid: propagationPolicy: Unsupported '
                       f'value: "{policy}": supported values: "Foreground", "Background", '
                       '"Orphan"')
    if any(v != "All" for v in options.get("dryRun") or []):
        raise bad_request('DeleteOptions.dryRun: supported values: "All"')
    return options


class Api:
    """The verbs over one :class:`Store`, for the kinds of one :class:`Registry`."""

    def __init__(self, registry: Registry, store: Store, clock: Callable[[], str] = now) -> None:
        self.registry = registry
        self.store = store
        self.clock = clock
        self._ns_kind = registry.by_key(NAMESPACES)
        self._started = clock()
        self._schemas: dict[tuple[tuple[str, str], str], schemas.CompiledSchema] = {}

    # -- helpers ------------------------------------------------------------------------

    def schema(self, kind: Kind, version: str) -> schemas.CompiledSchema | None:
        if not kind.custom:
            return None
        cache_key = (kind.key, version)
        if cache_key not in self._schemas:
            self._schemas[cache_key] = schemas.CompiledSchema(kind.schemas[version])
        return self._schemas[cache_key]

    def _require(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj = self.store.get(kind.key, namespace if kind.namespaced else None, name)
        if obj is None:
            raise not_found(kind.plural, kind.group, name)
        return obj

    def _check_scope(self, kind: Kind, namespace: str | None) -> str | None:
        if kind.namespaced and not namespace:
            raise ApiError(405, "MethodNotAllowed", f"{kind.plural} is namespaced; "
                           "use /namespaces/<namespace>/" + kind.plural)
        return namespace if kind.namespaced else None

    # -- reads --------------------------------------------------------------------------

    def get(self, kind: Kind, version: str, namespace: str | None, name: str) -> Obj:
        if kind is CRD_KIND:
            for crd in self._crd_objects():
                if crd["metadata"]["name"] == name:
                    return crd
            raise not_found(kind.plural, kind.group, name)
        return present(kind, version, self._require(kind, namespace, name))

    def matcher(
        self,
        kind: Kind,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
    ) -> ObjectPredicate:
        try:
            labels = parse_label_selector(label_selector)
        except SelectorError as e:
            raise bad_request(f"unable to parse requirement: {e}") from None
        try:
            fields = parse_field_selector(field_selector, kind.field_labels)
        except UnsupportedField as e:
            raise bad_request(str(e)) from None
        except SelectorError as e:
            raise bad_request(f"invalid field selector: {e}") from None

        def match(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            if namespace and meta.get("namespace") != namespace:
                return False
            return labels(meta.get("labels") or {}) and fields(obj)

        return match

    def list(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        match = self.matcher(kind, namespace, label_selector, field_selector)
        if kind is CRD_KIND:
            items = [o for o in self._crd_objects() if match(o)]
        else:
            objs = self.store.list(kind.key, namespace if kind.namespaced else None)
            items = [present(kind, version, o) for o in objs]
            items = [o for o in items if match(o)]
            items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return {
            "apiVersion": kind.api_version(version),
            "kind": kind.kind + "List",
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": items,
        }

    def watch_events(
        self, kind: Kind, version: str, match: ObjectPredicate
    ) -> Callable[[Change], Obj | None]:
        """Map store changes to watch events for one watcher (selector transitions included)."""

        def event(change: Change) -> Obj | None:
            new = present(kind, version, change.obj)
            if change.type == "DELETED":
                return {"type": "DELETED", "object": new} if match(new) else None
            now_in = match(new)
            was_in = change.old is not None and match(present(kind, version, change.old))
            if now_in and was_in:
                return {"type": "MODIFIED", "object": new}
            if now_in:
                return {"type": "ADDED", "object": new}
            if was_in:
                return {"type": "DELETED", "object": new}
            return None

        return event

    def _crd_objects(self) -> builtins.list[Obj]:
        out = []
        for crd in self.registry.crds:
            obj = copy.deepcopy(crd)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL, meta["name"])))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("creationTimestamp", self._started)
            meta.setdefault("generation", 1)
            stored = [v["name"] for v in obj["spec"]["versions"] if v.get("storage")]
            obj["status"] = {
                "acceptedNames": obj["spec"]["names"],
                "storedVersions": stored,
                "conditions": [
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted",
                     "lastTransitionTime": self._started},
                ],
            }
            out.append(obj)
        return out

    # -- create -------------------------------------------------------------------------

    def _check_body(
        self, kind: Kind, version: str, body: Any, namespace: str | None
    ) -> tuple[Obj, builtins.list[str]]:
        """The body as an object of ``kind`` (a copy) and the unknown fields dropped from it."""
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        check_depth(body)
        body = copy.deepcopy(body)
        want = kind.api_version(version)
        if body.get("apiVersion") and body["apiVersion"] != want:
            raise bad_request(
                f"the API version in the data ({body['apiVersion']}) does not match the "
                f"expected API version ({want})"
            )
        if body.get("kind") and body["kind"] != kind.kind:
            raise bad_request(
                f"the kind in the data ({body['kind']}) does not match the expected kind "
                f"({kind.kind})"
            )
        body["apiVersion"], body["kind"] = want, kind.kind
        if body.get("metadata") is None:
            body["metadata"] = {}
        problems = builtin.conform(kind, body)
        if problems.errors:
            shown = "; ".join(problems.errors[:5])
            more = len(problems.errors) - 5
            raise bad_request(
                f'{kind.kind} in version "{version}" cannot be handled as a {kind.kind}: {shown}'
                + (f" (and {more} more)" if more > 0 else "")
            )
        meta = body["metadata"]
        if kind.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace "
                    "sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return body, problems.unknown

    def _check_namespace_open(self, kind: Kind, namespace: str | None) -> None:
        if not kind.namespaced:
            return
        ns = self.store.get(NAMESPACES, None, namespace or "")
        if ns is None:
            raise not_found("namespaces", "", namespace or "")
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{kind.plural}{"." + kind.group if kind.group else ""} is forbidden: unable to '
                f"create new content in namespace {namespace} because it is being terminated",
            )

    def create(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        body: Any,
        dry_run: bool = False,
        strict: bool = False,
    ) -> tuple[Obj, builtins.list[str]]:
        """Create; returns the stored object (as ``version``) and warnings."""
        if kind.read_only:
            raise ApiError(405, "MethodNotAllowed", f"{kind.plural} are read-only here")
        namespace = self._check_scope(kind, namespace)
        obj, unknown = self._check_body(kind, version, body, namespace)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generate_name(kind, namespace, str(meta["generateName"]))
        self._check_namespace_open(kind, namespace)
        for f in (*_SERVER_META, "resourceVersion", "managedFields", "selfLink"):
            meta.pop(f, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self.clock()
        meta["generation"] = 1
        if kind.status_subresource:
            obj.pop("status", None)
        self._defaults_on_create(kind, obj)
        warnings = self._validate(kind, version, obj, None, strict, unknown)
        name = meta.get("name", "")
        if self.store.get(kind.key, namespace, name) is not None:
            raise already_exists(kind.plural, kind.group, name)
        self._check_size(obj)
        if dry_run:
            return present(kind, version, obj), warnings
        stored = self.store.put(kind.key, obj)
        return present(kind, version, stored), warnings

    def _generate_name(self, kind: Kind, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:58]
        if not prefix:
            raise invalid(kind.kind, kind.group, "", [schemas.cause(
                "metadata.generateName", "Required value: name or generateName is required",
                "FieldValueRequired")])
        for _ in range(20):
            name = prefix + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            if self.store.get(kind.key, namespace, name) is None:
                return name
        raise ApiError(409, "AlreadyExists", f"could not generate a unique name from {prefix!r}")

    def _defaults_on_create(self, kind: Kind, obj: Obj) -> None:
        meta, spec = obj["metadata"], obj.get("spec")
        if kind.group == "" and kind.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
            obj["status"] = {"phase": "Active"}
        elif kind.group == "" and kind.plural in ("persistentvolumeclaims", "persistentvolumes"):
            obj["status"] = {"phase": "Pending"}
            if isinstance(spec, dict):
                spec.setdefault("volumeMode", "Filesystem")
                if kind.plural == "persistentvolumes":
                    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
                elif "storageClassName" not in spec:
                    default = self._default_storage_class()
                    if default:
                        spec["storageClassName"] = default
        elif kind.group == "" and kind.plural == "pods":
            obj["status"] = {"phase": "Pending"}
        self._normalize(kind, obj)

    def _default_storage_class(self) -> str | None:
        for sc in self.store.list(("storage.k8s.io", "storageclasses")):
            if (sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                return sc["metadata"]["name"]
        return None

    def _normalize(self, kind: Kind, obj: Obj) -> None:
        """Conversions the real API applies on every write."""
        if kind.group == "" and kind.plural == "secrets" and isinstance(obj.get("stringData"), dict):
            data = obj.setdefault("data", {}) or {}
            for key, value in obj.pop("stringData").items():
                if isinstance(value, str):
                    data[key] = base64.b64encode(value.encode()).decode()
            obj["data"] = data

    def _validate(
        self,
        kind: Kind,
        version: str,
        obj: Obj,
        old: Obj | None,
        strict: bool,
        unknown: builtins.list[str] | None = None,
    ) -> builtins.list[str]:
        unknown = list(unknown or [])
        causes = schemas.validate_metadata(kind, obj)
        compiled = self.schema(kind, version)
        if compiled is not None:
            unknown += schemas.prune_and_default(obj, compiled.raw)
        if unknown and strict:
            raise bad_request(
                "strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown)
            )
        warnings = [f'unknown field "{u}"' for u in unknown]
        if compiled is not None:
            causes += compiled.validate(obj)
            if old is not None:
                causes += compiled.immutable(obj, present(kind, version, old))
        else:
            causes += schemas.validate_core(kind, obj)
        if causes:
            name = obj.get("metadata", {}).get("name") or ""
            raise invalid(kind.kind, kind.group, name, causes)
        return warnings

    @staticmethod
    def _check_size(obj: Obj) -> None:
        size = len(json.dumps(obj, separators=(",", ":")))
        if size > MAX_OBJECT_BYTES:
            raise ApiError(413, "RequestEntityTooLarge",
                           f"Request entity too large: the object is {size} bytes, the limit "
                           f"is {MAX_OBJECT_BYTES}")

    # -- update and patch ---------------------------------------------------------------

    def update(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        strict: bool = False,
    ) -> tuple[Obj, builtins.list[str]]:
        if kind.read_only:
            raise ApiError(405, "MethodNotAllowed", f"{kind.plural} are read-only here")
        namespace = self._check_scope(kind, namespace)
        old = self._require(kind, namespace, name)
        obj, unknown = self._check_body(kind, version, body, namespace)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        want_rv = meta.get("resourceVersion")
        if want_rv and str(want_rv) != old["metadata"]["resourceVersion"]:
            raise conflict(kind.plural, kind.group, name)
        return self._replace(kind, version, old, obj, subresource, dry_run, strict, unknown)

    def patch(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        strict: bool = False,
    ) -> tuple[Obj, builtins.list[str]]:
        if kind.read_only:
            raise ApiError(405, "MethodNotAllowed", f"{kind.plural} are read-only here")
        namespace = self._check_scope(kind, namespace)
        old = self._require(kind, namespace, name)
        patched = apply_patch(present(kind, version, old), content_type, body, kind.custom)
        return self.update(kind, version, namespace, name, patched, subresource, dry_run, strict)

    def _replace(
        self,
        kind: Kind,
        version: str,
        old: Obj,
        obj: Obj,
        subresource: str | None,
        dry_run: bool,
        strict: bool,
        unknown: builtins.list[str] | None = None,
    ) -> tuple[Obj, builtins.list[str]]:
        if subresource == "status":
            if not kind.status_subresource:
                raise not_found(kind.plural + "/status", kind.group, old["metadata"]["name"])
            new = copy.deepcopy(old)
            new["apiVersion"] = obj["apiVersion"]
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        elif subresource is not None:
            raise not_found(f"{kind.plural}/{subresource}", kind.group, old["metadata"]["name"])
        else:
            new = obj
            meta, old_meta = new["metadata"], old["metadata"]
            for f in _SERVER_META:
                if f in old_meta:
                    meta[f] = old_meta[f]
                else:
                    meta.pop(f, None)
            meta.pop("managedFields", None)
            if kind.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            self._normalize(kind, new)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        warnings = self._validate(kind, version, new, old, strict, unknown)
        if old["metadata"].get("deletionTimestamp"):
            added = set(new["metadata"].get("finalizers") or []) - set(
                old["metadata"].get("finalizers") or []
            )
            if added:
                raise ApiError(422, "Invalid", f'{kind.kind} "{old["metadata"]["name"]}" is '
                               "invalid: metadata.finalizers: Forbidden: no new finalizers can "
                               "be added if the object is being deleted")
        without_status = kind.status_subresource
        if _content(kind, new, without_status) != _content(kind, old, without_status):
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        if _content(kind, new, False) == _content(kind, old, False) and _meta_sans_rv(
            new
        ) == _meta_sans_rv(old):
            return present(kind, version, old), warnings
        self._check_size(new)
        if dry_run:
            return present(kind, version, new), warnings
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            final = self.store.delete(kind.key, new)
            self._after_delete(kind, final)
            return present(kind, version, final), warnings
        return present(kind, version, self.store.put(kind.key, new)), warnings

    # -- delete -------------------------------------------------------------------------

    def delete(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        options: Any = None,
        dry_run: bool = False,
    ) -> Obj:
        if kind.read_only:
            raise ApiError(405, "MethodNotAllowed", f"{kind.plural} are read-only here")
        namespace = self._check_scope(kind, namespace)
        opts = delete_options(options)
        old = self._require(kind, namespace, name)
        pre = opts.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
            raise conflict(kind.plural, kind.group, name)
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(kind.plural, kind.group, name)
        if kind.key == NAMESPACES and name in PROTECTED_NAMESPACES:
            raise ApiError(403, "Forbidden",
                           f'namespaces "{name}" is forbidden: this namespace may not be deleted')
        orphan = opts.get("propagationPolicy") == "Orphan" or opts.get("orphanDependents") is True
        if dry_run or "All" in (opts.get("dryRun") or []):
            return present(kind, version, old)
        return present(kind, version, self._delete(kind, old, orphan))

    def _delete(self, kind: Kind, old: Obj, orphan: bool = False) -> Obj:
        if kind.key == NAMESPACES:
            return self._delete_namespace(old)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = self.clock()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self.store.put(kind.key, new)
        final = self.store.delete(kind.key, old)
        self._after_delete(kind, final, orphan)
        return final

    def _delete_namespace(self, ns: Obj) -> Obj:
        name = ns["metadata"]["name"]
        if not ns["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(ns)
            new["metadata"]["deletionTimestamp"] = self.clock()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            ns = self.store.put(NAMESPACES, new)
        for kind in self.registry.namespaced_kinds():
            for obj in self.store.list(kind.key, name):
                self._delete(kind, obj)
        return self._finish_namespace(name) or ns

    def _after_delete(self, kind: Kind, final: Obj, orphan: bool = False) -> None:
        if not orphan:
            self._collect_dependents(final["metadata"].get("uid"))
        ns = final["metadata"].get("namespace")
        if kind.namespaced and ns:
            self._finish_namespace(ns)

    def _collect_dependents(self, uid: str | None) -> None:
        """Garbage collection: dependents whose owners are all gone are deleted, others
        lose the reference to the deleted owner (as the real garbage collector does)."""
        if not uid:
            return
        for key, obj in self.store.dependents(uid):
            kind = self.registry.by_key(key)
            if kind.read_only:
                continue
            current = self.store.get(key, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            if current is None:
                continue  # removed by an earlier cascade step
            obj = current
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            rest = [r for r in refs if r.get("uid") != uid]
            if rest and any(self._exists(r) for r in rest):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = rest
                self.store.put(key, new)
            else:
                self._delete(kind, obj)

    def _exists(self, ref: Obj) -> bool:
        owner = self.store.by_uid(str(ref.get("uid")))
        return owner is not None and owner.get("kind", ref.get("kind")) == ref.get("kind")

    def _finish_namespace(self, name: str) -> Obj | None:
        """Remove a terminating namespace once it is empty and has no finalizers left."""
        ns = self.store.get(NAMESPACES, None, name)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return None
        if ns["metadata"].get("finalizers"):
            return None
        if any(self.store.has_any(kind.key, name) for kind in self.registry.namespaced_kinds()):
            return None
        return self.store.delete(NAMESPACES, ns)

    def delete_collection(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        dry_run: bool = False,
        options: Any = None,
    ) -> Obj:
        if kind.read_only:
            raise ApiError(405, "MethodNotAllowed", f"{kind.plural} are read-only here")
        delete_options(options)
        listed = self.list(kind, version, namespace, label_selector, field_selector)
        items = []
        for item in listed["items"]:
            meta = item["metadata"]
            items.append(self.delete(kind, version, meta.get("namespace"), meta["name"],
                                     options, dry_run=dry_run))
        listed["items"] = items
        listed["metadata"] = {"resourceVersion": str(self.store.rv)}
        return listed
