"""The aiohttp application: authentication, discovery, REST routes, watch streams.

URL layout is the real API server's::

    /api/v1[/namespaces/{ns}]/{plural}[/{name}[/status]]
    /apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/status]]

Every request needs ``Authorization: Bearer <token>`` except the health probes
(``/healthz``, ``/livez``, ``/readyz``), which the real API server also serves to anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web

from . import decode, openapi, openapi_pb, params, printing
from .errors import ApiError, status_body
from .resources import Kind, Registry, default_registry
from .store import Expired, Store
from .verbs import Api

log = logging.getLogger(__name__)

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-drkit-lab",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_HEALTH = ("/healthz", "/livez", "/readyz")
_POLL = 1.0  # how often an idle watch checks for a gone client
BOOKMARK_INTERVAL = 10.0

API_KEY = web.AppKey("api", Api)
TOKEN_KEY = web.AppKey("token", str)


class Encoded:
    """Each stored object's JSON, encoded once per resourceVersion and served version.

    Lists and watch events are mostly objects that did not change since the last time
    they were sent; they are joined from these bytes instead of being encoded again.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._cache: dict[tuple[Any, ...], tuple[str, bytes]] = {}

    def __call__(self, kind: Kind, obj: dict[str, Any]) -> bytes:
        meta = obj["metadata"]
        key = (kind.key, obj.get("apiVersion"), meta.get("namespace"), meta.get("name"))
        rv = meta.get("resourceVersion")
        hit = self._cache.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        data = json.dumps(obj, separators=(",", ":")).encode()
        if len(self._cache) >= self.limit:
            self._cache.clear()
        if rv:
            self._cache[key] = (rv, data)
        return data

    def listing(self, kind: Kind, listed: dict[str, Any]) -> bytes:
        head = {k: v for k, v in listed.items() if k != "items"}
        items = b",".join(self(kind, o) for o in listed["items"])
        return json.dumps(head, separators=(",", ":")).encode()[:-1] + b',"items":[' + items + b"]}"

    def event(self, kind: Kind, event: dict[str, Any]) -> bytes:
        obj = event["object"]
        if obj.get("kind") == "Table" or "metadata" not in obj or event["type"] == "BOOKMARK":
            return json.dumps(event, separators=(",", ":")).encode() + b"\n"
        return b'{"type":"' + event["type"].encode() + b'","object":' + self(kind, obj) + b"}\n"


ENCODED_KEY = web.AppKey("encoded", Encoded)


def _json(body: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    headers = {}
    if warnings:  # quoted-strings of printable ASCII: a field name may hold anything
        headers["Warning"] = ", ".join(f'299 - "{json.dumps(w)[1:-1]}"' for w in warnings)
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _json(e.status(), e.code)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = {404: "NotFound", 405: "MethodNotAllowed", 413: "RequestEntityTooLarge"}
        message = (
            "the server could not find the requested resource" if e.status == 404 else e.reason
        )
        return _json(status_body(e.status, reason.get(e.status, "BadRequest"), message), e.status)
    except Exception as e:  # one bad request must not take the site down
        log.exception("internal error on %s %s", request.method, request.path)
        return _json(status_body(500, "InternalError", f"Internal error occurred: {e}"), 500)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path not in _HEALTH:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = request.app[TOKEN_KEY]
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            return _json(status_body(401, "Unauthorized", "Unauthorized"), 401)
    return await handler(request)


# -- discovery ---------------------------------------------------------------------------


def _resource_entries(kind: Kind) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": kind.verbs(),
    }
    if kind.short_names:
        entry["shortNames"] = list(kind.short_names)
    if kind.categories:
        entry["categories"] = list(kind.categories)
    entries = [entry]
    if kind.status_subresource:
        entries.append({
            "name": kind.plural + "/status",
            "singularName": "",
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": ["get", "patch", "update"],
        })
    return entries


def _group_doc(registry: Registry, group: str) -> dict[str, Any]:
    versions = registry.group_versions(group)
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def _resource_list(registry: Registry, group: str, version: str) -> dict[str, Any]:
    kinds = registry.kinds_in(group, version)
    if not kinds:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [e for k in kinds for e in _resource_entries(k)],
    }


# -- request parsing ---------------------------------------------------------------------


def _route(request: web.Request) -> tuple[Kind, str, str | None, str | None, str | None]:
    """(kind, version, namespace, name, subresource) for a resource URL, or 404."""
    parts = [p for p in request.path.split("/") if p]
    registry = request.app[API_KEY].registry
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise _unknown()
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise _unknown()
    kind = registry.lookup(group, version, rest[0])
    if kind is None:
        raise _unknown()
    if namespace is not None and not kind.namespaced:
        raise _unknown()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return kind, version, namespace, name, sub


def _unknown() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


async def _body(request: web.Request, accepted: tuple[str, ...]) -> Any:
    raw = await request.read()
    return decode.decode(raw, request.headers.get("Content-Type"), accepted)


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


# -- handlers ----------------------------------------------------------------------------


async def _resource(request: web.Request) -> web.StreamResponse:
    api = request.app[API_KEY]
    kind, version, namespace, name, sub = _route(request)
    q = request.query
    method = request.method
    if sub not in (None, "status"):
        raise _unknown()
    if method == "GET":
        if name is None:
            lp = params.list_params(q)
            if lp.watch:
                return await _watch(request, api, kind, version, namespace, lp)
            listed = api.list(kind, version, namespace, lp.label_selector, lp.field_selector)
            if _wants_table(request):
                return _json(printing.table(kind, version, listed["items"],
                                            listed["metadata"]["resourceVersion"],
                                            q.get("includeObject", "Metadata")))
            return web.Response(body=request.app[ENCODED_KEY].listing(kind, listed),
                                content_type="application/json")
        obj = api.get(kind, version, namespace, name)
        if sub == "status" and not kind.status_subresource:
            raise _unknown()
        if _wants_table(request):
            return _json(printing.table(kind, version, [obj], obj["metadata"]["resourceVersion"],
                                        q.get("includeObject", "Metadata")))
        return _json(obj)
    if method == "POST" and name is None and sub is None:
        wp = params.write_params(q)
        body = await _body(request, decode.OBJECT_TYPES)
        obj, warnings = api.create(kind, version, namespace, body, wp.dry_run, wp.strict)
        return _json(obj, 201, wp.shown(warnings))
    if method == "PUT" and name is not None:
        wp = params.write_params(q)
        body = await _body(request, decode.OBJECT_TYPES)
        obj, warnings = api.update(kind, version, namespace, name, body, sub, wp.dry_run,
                                   wp.strict)
        return _json(obj, 200, wp.shown(warnings))
    if method == "PATCH" and name is not None:
        wp = params.write_params(q)
        ctype = decode.media_type(request.headers.get("Content-Type"))
        body = await _body(request, decode.PATCH_TYPES)
        obj, warnings = api.patch(kind, version, namespace, name, ctype, body, sub, wp.dry_run,
                                  wp.strict)
        return _json(obj, 200, wp.shown(warnings))
    if method == "DELETE" and sub is None:
        wp = params.write_params(q)
        options = await _body(request, (decode.JSON, decode.YAML))
        options = _delete_query_options(q, options)
        if name is None:
            lp = params.list_params(q)
            return _json(api.delete_collection(kind, version, namespace, lp.label_selector,
                                               lp.field_selector, wp.dry_run, options))
        return _json(api.delete(kind, version, namespace, name, options, wp.dry_run))
    raise ApiError(405, "MethodNotAllowed",
                   "the server does not allow this method on the requested resource")


def _delete_query_options(q: Any, options: Any) -> Any:
    """``propagationPolicy`` and ``orphanDependents`` may also come as query parameters."""
    if options is not None and not isinstance(options, dict):
        return options  # refused by the verb with a clear message
    merged = dict(options or {})
    if q.get("propagationPolicy"):
        merged.setdefault("propagationPolicy", q["propagationPolicy"])
    if q.get("orphanDependents"):
        merged.setdefault("orphanDependents", params.flag(q, "orphanDependents"))
    return merged or options


async def _watch(
    request: web.Request,
    api: Api,
    kind: Kind,
    version: str,
    namespace: str | None,
    lp: params.ListParams,
) -> web.StreamResponse:
    q = request.query
    match = api.matcher(kind, namespace, lp.label_selector, lp.field_selector)
    since = lp.since
    timeout = lp.timeout or None
    bookmarks = lp.bookmarks

    resp = web.StreamResponse(status=200)
    resp.content_type = "application/json"
    resp.enable_chunked_encoding()
    try:
        watcher, backlog = api.store.subscribe(kind.key, since)
    except Expired as e:
        await resp.prepare(request)
        err = {"type": "ERROR", "object": status_body(410, "Expired", str(e))}
        await resp.write(json.dumps(err).encode() + b"\n")
        await resp.write_eof()
        return resp
    to_event = api.watch_events(kind, version, match)
    if _wants_table(request):  # kubectl get -w: each event carries a one-row Table
        as_object = to_event
        include = q.get("includeObject", "Metadata")

        def to_event(change):
            event = as_object(change)
            if event:
                obj = event["object"]
                event["object"] = printing.table(kind, version, [obj],
                                                 obj["metadata"]["resourceVersion"], include)
            return event
    initial = []
    if since is None:
        initial = api.list(kind, version, namespace, lp.label_selector,
                           lp.field_selector)["items"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    last_write = loop.time()

    encoded = request.app[ENCODED_KEY]

    async def send(event: dict[str, Any]) -> None:
        nonlocal last_write
        await resp.write(encoded.event(kind, event))
        last_write = loop.time()

    try:
        await resp.prepare(request)
        for obj in initial:
            await send({"type": "ADDED", "object": obj})
        for missed in backlog:
            event = to_event(missed)
            if event:
                await send(event)
        while True:
            wait = _POLL
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            try:
                change = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                if bookmarks and loop.time() - last_write >= BOOKMARK_INTERVAL:
                    await send({"type": "BOOKMARK", "object": {
                        "kind": kind.kind, "apiVersion": kind.api_version(version),
                        "metadata": {"resourceVersion": str(api.store.rv)}}})
                continue
            if change is None:
                break
            event = to_event(change)
            if event:
                await send(event)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        api.store.unsubscribe(watcher)
    return resp


async def _version(request: web.Request) -> web.Response:
    return _json(SERVER_VERSION)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _api_versions(request: web.Request) -> web.Response:
    host = request.host
    return _json({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    })


async def _core_resources(request: web.Request) -> web.Response:
    return _json(_resource_list(request.app[API_KEY].registry, "", "v1"))


async def _groups(request: web.Request) -> web.Response:
    registry = request.app[API_KEY].registry
    return _json({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_doc(registry, g) for g in registry.groups()],
    })


async def _group(request: web.Request) -> web.Response:
    registry = request.app[API_KEY].registry
    group = request.match_info["group"]
    if group not in registry.groups():
        raise _unknown()
    return _json({"kind": "APIGroup", "apiVersion": "v1", **_group_doc(registry, group)})


async def _group_version(request: web.Request) -> web.Response:
    registry = request.app[API_KEY].registry
    return _json(_resource_list(registry, request.match_info["group"],
                                request.match_info["version"]))


async def _not_found(request: web.Request) -> web.Response:
    raise _unknown()


class OpenApiDocs:
    """The OpenAPI documents, built once on first use in a worker thread (a few seconds of
    CPU that must not hold up start-up or the event loop)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._task: asyncio.Future[dict[str, Any]] | None = None

    def _build(self) -> dict[str, Any]:
        v2 = openapi.v2_doc(self.registry)
        return {"v2": _encoded(v2), "v2pb": openapi_pb.document(v2),
                "v3": {k: _encoded(v) for k, v in openapi.v3_docs(self.registry).items()}}

    async def get(self) -> dict[str, Any]:
        if self._task is None:
            self._task = asyncio.ensure_future(asyncio.to_thread(self._build))
        return await asyncio.shield(self._task)


def _encoded(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


OPENAPI_KEY = web.AppKey("openapi", OpenApiDocs)


def _cached(body: bytes, content_type: str, request: web.Request) -> web.Response:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32].upper() + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache, private", "Vary": "Accept"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)


async def _openapi_v2(request: web.Request) -> web.Response:
    docs = await request.app[OPENAPI_KEY].get()
    accept = request.headers.get("Accept", "")
    if any(t in accept for t in openapi_pb.CONTENT_TYPES):
        return _cached(docs["v2pb"], openapi_pb.CONTENT_TYPES[1], request)
    return _cached(docs["v2"], "application/json", request)


async def _openapi_root(request: web.Request) -> web.Response:
    docs = await request.app[OPENAPI_KEY].get()
    return _cached(docs["v3"]["root"], "application/json", request)


async def _openapi_gv(request: web.Request) -> web.Response:
    docs = await request.app[OPENAPI_KEY].get()
    path = request.match_info["gv"].strip("/")
    if path == "root" or path not in docs["v3"]:
        raise _unknown()
    return _cached(docs["v3"][path], "application/json", request)


def make_app(
    store: Store, token: str, registry: Registry | None = None
) -> web.Application:
    """The aiohttp application serving ``store`` to clients that present ``token``."""
    if not token:
        raise ValueError("a non-empty token is required")
    api = Api(registry or default_registry(), store)
    seed_namespaces(api)
    app = web.Application(middlewares=[_errors, _auth], client_max_size=8 * 1024 * 1024)
    app[API_KEY] = api
    app[TOKEN_KEY] = token
    app[OPENAPI_KEY] = OpenApiDocs(api.registry)
    app[ENCODED_KEY] = Encoded()

    async def stop_watches(app: web.Application) -> None:
        store.stop_watches()

    app.on_shutdown.append(stop_watches)
    r = app.router
    slash = "{_slash:/?}"  # the python client asks for /version/, /apis/, /api/v1/
    r.add_get("/version" + slash, _version)
    for path in _HEALTH:
        r.add_get(path, _health)
    r.add_get("/api" + slash, _api_versions)
    r.add_get("/api/v1" + slash, _core_resources)
    r.add_get("/apis" + slash, _groups)
    r.add_get("/apis/{group}" + slash, _group)
    r.add_get("/apis/{group}/{version}" + slash, _group_version)
    r.add_get("/openapi/v2" + slash, _openapi_v2)
    r.add_get("/openapi/v3" + slash, _openapi_root)
    r.add_get("/openapi/v3/{gv:.+}", _openapi_gv)
    r.add_route("*", "/openapi/{tail:.*}", _not_found)
    r.add_route("*", "/api/v1/{tail:.+}", _resource)
    r.add_route("*", "/apis/{group}/{version}/{tail:.+}", _resource)
    return app


def seed_namespaces(api: Api) -> None:
    """A fresh site has the namespaces every cluster has."""
    ns_kind = api.registry.by_key(("", "namespaces"))
    if api.store.count() == 0:
        for name in ("default", "kube-system", "kube-public"):
            api.create(ns_kind, "v1", None, {"metadata": {"name": name}})
