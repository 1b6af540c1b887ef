"""How dr_kit reaches a Kubernetes API: one client factory, one wrapper, one resource registry.

Everything in dr_kit that talks to a cluster — the analyst library, the operator, the lab's
storage plug-ins — goes through this module and the official ``kubernetes`` client::

    api = api_client("~/.kube/config", "prod-east")     # or api_client(in_cluster=True)
    kube = Kube(api, where="the main site's API server")
    kube.items("PersistentVolumeClaim", "shop")          # plain dicts, kind and apiVersion set
    kube.get("Secret", "shop-db", "shop")                # None when it does not exist
    kube.patch("Namespace", "shop", {"metadata": {"labels": {...}}})
    parse_quantity("64Mi")                               # 67108864 (bytes)

:data:`RESOURCES` names every kind dr_kit reads or writes once (group, version, plural,
scope); API paths and the operator's RBAC rules come from it.  A :class:`Kube` built with
``allowed`` refuses any call outside that table at once, so a missing RBAC rule shows up
in a test rather than on a customer's cluster.

Every failure is one :class:`~dr_kit.errors.DrKitError` line that names the API server:
a missing kubeconfig or unknown context, refused credentials, a forbidden call, an
unreachable server.  Nothing here prints or logs a token.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from dr_kit.errors import Conflict, DrKitError, InvalidInput, NotFound, Unavailable

MERGE_PATCH = "application/merge-patch+json"

# -- the resource registry ---------------------------------------------------------------

# API groups served by every Kubernetes API server (everything else comes from a CRD)
BUILTIN_GROUPS = frozenset({"", "apps", "batch", "storage.k8s.io", "events.k8s.io",
                            "coordination.k8s.io", "rbac.authorization.k8s.io"})


@dataclass(frozen=True)
class Resource:
    """One kind as the API serves it.  ``alternatives`` are other versions of the same kind
    a cluster may serve instead (resolved by discovery, see :meth:`Kube.resource`)."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool
    alternatives: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def crd_name(self) -> str | None:
        """Name of the CustomResourceDefinition, None for built-in kinds."""
        if self.group in BUILTIN_GROUPS:
            return None
        return f"{self.plural}.{self.group}"

    def at(self, version: str) -> Resource:
        """The same kind at another served version."""
        return Resource(self.kind, self.group, version, self.plural, self.namespaced,
                        self.alternatives)


REPL_GROUP = "replication.storage.openshift.io"
HSPC_GROUP = "hspc.hitachi.com"
GSNAP_GROUP = "groupsnapshot.storage.k8s.io"
SNAP_GROUP = "snapshot.storage.k8s.io"
# VolumeGroupSnapshot versions in order of preference (the lab serves v1beta2)
GSNAP_VERSIONS = ("v1beta2", "v1", "v1beta1")

RESOURCES: dict[str, Resource] = {}


def register(resource: Resource) -> Resource:
    """Add a kind to :data:`RESOURCES` (the same kind twice must be the same resource)."""
    known = RESOURCES.get(resource.kind)
    if known is not None and known != resource:
        raise ValueError(f"kind {resource.kind} is registered already as {known}")
    RESOURCES[resource.kind] = resource
    return resource


for _r in (
    Resource("Namespace", "", "v1", "namespaces", False),
    Resource("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", True),
    Resource("PersistentVolume", "", "v1", "persistentvolumes", False),
    Resource("Event", "", "v1", "events", True),
    Resource("Secret", "", "v1", "secrets", True),
    Resource("ConfigMap", "", "v1", "configmaps", True),
    Resource("Pod", "", "v1", "pods", True),
    Resource("Deployment", "apps", "v1", "deployments", True),
    Resource("StorageClass", "storage.k8s.io", "v1", "storageclasses", False),
    Resource("VolumeGroupReplication", REPL_GROUP, "v1alpha1", "volumegroupreplications", True),
    Resource("VolumeGroupReplicationClass", REPL_GROUP, "v1alpha1",
             "volumegroupreplicationclasses", False),
    Resource("VolumeReplication", REPL_GROUP, "v1alpha1", "volumereplications", True),
    Resource("VolumeReplicationClass", REPL_GROUP, "v1alpha1", "volumereplicationclasses", False),
    Resource("Replication", HSPC_GROUP, "v1", "replications", True),
    Resource("ReplicationGroup", HSPC_GROUP, "v1", "replicationgroups", True),
    Resource("VolumeGroupSnapshot", GSNAP_GROUP, GSNAP_VERSIONS[0], "volumegroupsnapshots", True,
             GSNAP_VERSIONS[1:]),
    Resource("VolumeGroupSnapshotClass", GSNAP_GROUP, GSNAP_VERSIONS[0],
             "volumegroupsnapshotclasses", False, GSNAP_VERSIONS[1:]),
    Resource("VolumeGroupSnapshotContent", GSNAP_GROUP, GSNAP_VERSIONS[0],
             "volumegroupsnapshotcontents", False, GSNAP_VERSIONS[1:]),
    Resource("VolumeSnapshot", SNAP_GROUP, "v1", "volumesnapshots", True),
    Resource("VolumeSnapshotContent", SNAP_GROUP, "v1", "volumesnapshotcontents", False),
    Resource("VolumeSnapshotClass", SNAP_GROUP, "v1", "volumesnapshotclasses", False),
):
    register(_r)


# -- small values ----------------------------------------------------------------------------


def parse_quantity(q: Any) -> int:
    """Bytes in a Kubernetes quantity (``64Mi``, ``1G``, ``500m``), rounded up to a whole byte.

    Parsed by the official client's :func:`kubernetes.utils.parse_quantity`; anything it
    does not read (``1g``, ``lots``) is an :class:`InvalidInput`.
    """
    from kubernetes.utils import parse_quantity as k8s_parse

    if isinstance(q, bool):
        raise InvalidInput(f"not a quantity: {q!r} (use e.g. 64Mi or 1Gi)")
    try:
        value = k8s_parse(q)
    except (ValueError, TypeError, InvalidOperation, ArithmeticError):
        raise InvalidInput(f"not a quantity: {q!r} (use e.g. 64Mi or 1Gi)") from None
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidInput(f"not a quantity: {q!r} (use e.g. 64Mi or 1Gi)")
    return int(math.ceil(value))


def rfc3339(t: float | None = None) -> str:
    """A Kubernetes time (``metav1.Time``: whole seconds, UTC); now when ``t`` is None."""
    dt = datetime.fromtimestamp(t, UTC) if t is not None else datetime.now(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes time (RFC 3339, ``Z`` or an offset) as an aware datetime; None when
    ``value`` is missing or not a time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


# -- the client factory ------------------------------------------------------------------------


def contexts(kubeconfig: str | os.PathLike[str] | None) -> list[str]:
    """Context names in a kubeconfig ([] when it cannot be read)."""
    from kubernetes import config as k8s_config

    try:
        found, _ = k8s_config.list_kube_config_contexts(
            str(kubeconfig) if kubeconfig is not None else None)
        return [c["name"] for c in found]
    except Exception:  # noqa: BLE001 - only for hints in error messages
        return []


def api_client(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None, *,
               in_cluster: bool = False, retries: int | None = 1, hint: str = "") -> Any:
    """An official-client ``ApiClient`` for one kubeconfig context, or the pod's service
    account (``in_cluster``).  Without ``kubeconfig``: ``$KUBECONFIG`` or ``~/.kube/config``.

    Raises :class:`NotFound` for a missing kubeconfig file and :class:`InvalidInput` for an
    unknown context or an unusable file (``hint`` is added to the latter when no
    kubeconfig was named).
    """
    import yaml
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    if in_cluster:
        cfg = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException as e:
            raise InvalidInput(f"not running in a cluster: {first_line(e)}; pass a kubeconfig "
                               "instead") from None
        api = k8s.ApiClient(cfg)
    else:
        path = Path(kubeconfig).expanduser() if kubeconfig else None
        where = f"kubeconfig {path}" if path else "the default kubeconfig"
        if path is not None and not path.is_file():
            raise NotFound(f"{where} does not exist")
        known = contexts(path)
        if context and known and context not in known:
            raise InvalidInput(f"context {context!r} is not in {where} "
                               f"(contexts: {', '.join(known)})")
        try:
            api = k8s_config.new_client_from_config(
                config_file=str(path) if path else None, context=context)
        except k8s_config.ConfigException as e:
            extra = f" (contexts: {', '.join(known)})" if known else ("" if path else hint)
            raise InvalidInput(f"{where}: {first_line(e)}{extra}") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
            raise InvalidInput(f"{where} is not usable: {first_line(e)}") from None
    if retries is not None:
        api.configuration.retries = retries
    return api


# -- the wrapper ---------------------------------------------------------------------------


class Kube:
    """One cluster's API through the official client, returning plain dicts.

    ``where`` names the server in error messages (default: its URL).  With ``allowed``
    (``(api group, plural) -> verbs``) a call outside the table raises at once (a missing
    RBAC rule would fail the same way on a real cluster, only later); every call made is
    recorded in :attr:`calls`.  Each request has a ``timeout`` in seconds.
    """

    def __init__(self, api_client: Any,
                 allowed: Mapping[tuple[str, str], frozenset[str]] | None = None,
                 *, timeout: float = 10.0, where: str | None = None) -> None:
        self.api = api_client
        self.allowed = allowed
        self.timeout = timeout
        self.host: str = api_client.configuration.host
        self.where = where or f"the API server at {self.host}"
        self.calls: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._groups: dict[str, list[str]] | None = None
        self._resolved: dict[str, Resource] = {}

    # -- plumbing --------------------------------------------------------------------

    def _check(self, res: Resource, verb: str, subresource: str | None = None) -> None:
        plural = f"{res.plural}/{subresource}" if subresource else res.plural
        with self._lock:
            self.calls.add((res.group, plural, verb))
        if self.allowed is not None and verb not in self.allowed.get((res.group, plural), ()):
            raise DrKitError(f"bug: {verb} {plural} is not in its declared permissions")

    @staticmethod
    def path(res: Resource, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/api/{res.version}" if not res.group else f"/apis/{res.group}/{res.version}"
        if res.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{res.plural}"
        if name:
            base += f"/{name}"
        return base + (f"/{subresource}" if subresource else "")

    def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        """One HTTP call; the JSON answer as a dict ({} when it is not an object)."""
        import urllib3
        from kubernetes import client as k8s

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            m, url, h, b, _ = self.api.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"])
            resp = self.api.call_api(m, url, header_params=h, body=b,
                                     _request_timeout=self.timeout)
            data = resp.read()
        except (urllib3.exceptions.HTTPError, OSError, k8s.ApiException) as exc:
            raise Unavailable(f"{self.where} is unreachable ({_reason(exc)})") from None
        payload = _json(data)
        if resp.status >= 400:
            raise api_error(resp.status, payload, where=self.where, doing=f"{method} {path}")
        return payload if isinstance(payload, dict) else {}

    # -- discovery -------------------------------------------------------------------------

    def served_versions(self, group: str) -> list[str]:
        """Versions the cluster serves for an API group ([] when it serves none)."""
        if group == "":
            return ["v1"]
        if self._groups is None:
            data = self.request("GET", "/apis")
            self._groups = {g["name"]: [v["version"] for v in g.get("versions") or []]
                            for g in data.get("groups") or []}
        return self._groups.get(group, [])

    def resource(self, kind: str) -> Resource:
        """The registered kind at the version this cluster serves.

        Kinds with ``alternatives`` are resolved once by discovery; a kind the cluster does
        not serve at any known version is a :class:`NotFound` naming its CRD.
        """
        res = RESOURCES.get(kind)
        if res is None:
            raise InvalidInput(f"unknown kind {kind!r} (known: {', '.join(sorted(RESOURCES))})")
        if not res.alternatives:
            return res
        got = self._resolved.get(kind)
        if got is None:
            served = self.served_versions(res.group)
            version = next((v for v in (res.version, *res.alternatives) if v in served), None)
            if version is None:
                raise NotFound(f"{self.where} does not serve {res.group} ({kind}); install "
                               f"the CRD {res.crd_name}")
            got = self._resolved[kind] = res.at(version)
        return got

    def serves(self, kind: str) -> bool:
        """Whether the cluster serves ``kind`` (at a registered version)."""
        return kind in self.served_kinds((kind,))

    def served_kinds(self, kinds: Iterable[str]) -> set[str]:
        """Which of ``kinds`` the cluster serves, by API discovery."""
        served: set[str] = set()
        by_gv: dict[str, list[Resource]] = {}
        for kind in kinds:
            try:
                r = self.resource(kind)
            except NotFound:
                continue
            by_gv.setdefault(r.api_version, []).append(r)
        for gv, resources in by_gv.items():
            path = f"/api/{gv}" if "/" not in gv else f"/apis/{gv}"
            try:
                listing = self.request("GET", path)
            except NotFound:
                continue
            plurals = {r.get("name") for r in listing.get("resources") or []}
            served.update(r.kind for r in resources if r.plural in plurals)
        return served

    def version(self) -> dict[str, Any]:
        """The API server's version (``/version``); raises when it cannot be reached."""
        return self.request("GET", "/version")

    # -- verbs ---------------------------------------------------------------------------

    def list(self, kind: str, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None
             ) -> dict[str, Any]:
        res = self.resource(kind)
        self._check(res, "list")
        query: builtins.list[tuple[str, str]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        out = self.request("GET", self.path(res, namespace), query=query)
        for item in out.get("items") or []:  # list items omit kind/apiVersion
            item.setdefault("kind", res.kind)
            item.setdefault("apiVersion", res.api_version)
        return out

    def items(self, kind: str, namespace: str | None = None, **kw: Any
              ) -> builtins.list[dict[str, Any]]:
        return builtins.list(self.list(kind, namespace, **kw).get("items") or [])

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """One object, None when it does not exist."""
        res = self.resource(kind)
        self._check(res, "get")
        try:
            return self.request("GET", self.path(res, namespace, name))
        except NotFound:
            return None

    def create(self, kind: str, body: dict[str, Any], *, exist_ok: bool = False
               ) -> dict[str, Any]:
        """Create ``body`` (its namespace from its metadata).  With ``exist_ok`` an object of
        the same name that exists already is returned instead of a :class:`Conflict`."""
        res = self.resource(kind)
        self._check(res, "create")
        md = body.get("metadata") or {}
        body = {"apiVersion": res.api_version, "kind": res.kind, **body}
        try:
            return self.request("POST", self.path(res, md.get("namespace")), body=body)
        except Conflict:
            if exist_ok and md.get("name"):
                got = self.get(kind, md["name"], md.get("namespace"))
                if got is not None:
                    return got
            raise

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str | None = None,
              *, status: bool = False, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        """A merge patch (of the ``status`` subresource with ``status=True``)."""
        res = self.resource(kind)
        sub = "status" if status else None
        self._check(res, "patch", sub)
        return self.request("PATCH", self.path(res, namespace, name, sub), body=body,
                            content_type=content_type)

    def delete(self, kind: str, name: str, namespace: str | None = None, *,
               missing_ok: bool = False) -> dict[str, Any]:
        res = self.resource(kind)
        self._check(res, "delete")
        try:
            return self.request("DELETE", self.path(res, namespace, name))
        except NotFound:
            if missing_ok:
                return {}
            raise

    def watch(self, kind: str, resource_version: str, *, label_selector: str | None = None,
              timeout_seconds: int = 30) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) pairs from a watch of ``kind`` in all namespaces; ends after
        ``timeout_seconds``."""
        import urllib3
        from kubernetes import client as k8s
        from kubernetes import watch as k8s_watch

        res = self.resource(kind)
        self._check(res, "watch")
        kw: dict[str, Any] = {"resource_version": resource_version,
                              "timeout_seconds": timeout_seconds,
                              "allow_watch_bookmarks": True}
        if label_selector:
            kw["label_selector"] = label_selector
        func: Callable[..., Any]
        args: tuple[Any, ...]
        if res.group not in BUILTIN_GROUPS:
            func = k8s.CustomObjectsApi(self.api).list_cluster_custom_object
            args = (res.group, res.version, res.plural)
        elif kind in _CORE_WATCH:
            func, args = getattr(k8s.CoreV1Api(self.api), _CORE_WATCH[kind]), ()
        else:
            raise InvalidInput(f"cannot watch {kind}")
        w = k8s_watch.Watch()
        try:
            for ev in w.stream(func, *args, **kw):
                yield ev["type"], ev.get("raw_object") or {}
        except k8s.ApiException as exc:
            raise api_error(exc.status or 0, _json(exc.body), where=self.where,
                            doing=f"WATCH {self.path(res)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"{self.where} is unreachable ({_reason(exc)})") from None
        finally:
            w.stop()


_CORE_WATCH = {"Namespace": "list_namespace",
               "PersistentVolumeClaim": "list_persistent_volume_claim_for_all_namespaces",
               "PersistentVolume": "list_persistent_volume"}


def _json(body: Any) -> Any:
    try:
        return json.loads(body) if body else None
    except (TypeError, ValueError):
        return None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return first_line(reason)[:200]


def api_error(status: int, payload: Any, *, where: str, doing: str = "") -> DrKitError:
    """The one-line error for an HTTP error status of a Kubernetes API server."""
    message = payload.get("message") if isinstance(payload, dict) else None
    msg = first_line(message) if message else f"HTTP {status}"
    at = f" ({doing})" if doing else ""
    if status == 401:
        return InvalidInput(f"{where} refused the kubeconfig credentials (HTTP 401){at}; check "
                            "the context's user/token")
    if status == 403:
        return InvalidInput(f"{where}: forbidden{at}: {msg} (check the RBAC rules of the user "
                            "or service account)")
    if status == 404:
        return NotFound(f"{where}: {msg}{at}")
    if status == 409:
        return Conflict(f"{where}: {msg}{at}")
    if status in (400, 422):
        return InvalidInput(f"{where} rejected the request{at}: {msg}")
    return Unavailable(f"{where} answered HTTP {status}{at}: {msg}")


__all__ = ["BUILTIN_GROUPS", "GSNAP_GROUP", "GSNAP_VERSIONS", "HSPC_GROUP", "Kube",
           "MERGE_PATCH", "REPL_GROUP", "RESOURCES", "Resource", "SNAP_GROUP", "api_client",
           "api_error", "contexts", "first_line", "parse_quantity", "parse_time", "register",
           "rfc3339"]
