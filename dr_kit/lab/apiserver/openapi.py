"""The OpenAPI documents a real API server publishes: ``/openapi/v2`` and ``/openapi/v3``.

Clients validate and explain with them. kubectl asks ``/openapi/v3`` whether a kind's
PATCH accepts ``fieldValidation`` (then leaves validation to the server, which prunes and
refuses unknown fields) and reads the schemas for ``kubectl explain``; older kubectl
releases (and ``kubectl explain --output plaintext-openapiv2``) read ``/openapi/v2``
instead, as protobuf (see :mod:`.openapi_pb`) or JSON.

Both carry, for every served kind, its paths (with ``x-kubernetes-group-version-kind``,
``x-kubernetes-action`` and the query parameters) and its schema: the built-in kinds'
definitions come from the official client's models (:mod:`.builtin`), the custom kinds'
from their CRDs (in v2 converted as a real server converts them: no ``nullable``,
``anyOf``/``oneOf``/``not`` or CEL rules, and ``metadata`` refers to ``ObjectMeta``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from . import builtin
from .resources import Kind, Registry

VERSION = "v1.32.0"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
V2_REF = "#/definitions/"
V3_REF = "#/components/schemas/"
PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml"]
PRODUCES = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def schema_name(kind: Kind, version: str) -> str:
    """The definition name of a kind: ``io.k8s.api.core.v1.Pod``, ``io.openshift...Kind``."""
    root = builtin.root_model(kind)
    if root is not None:
        return builtin.definition_name(root)
    reverse = ".".join(reversed(kind.group.split("."))) if kind.group else "io.k8s.api.core"
    return f"{reverse}.{version}.{kind.kind}"


def _gvk(kind: Kind, version: str) -> dict[str, str]:
    return {"group": kind.group, "kind": kind.kind, "version": version}


def _served(registry: Registry, group: str, version: str) -> list[Kind]:
    return [k for k in registry.kinds_in(group, version) if not k.read_only]


# -- schemas -----------------------------------------------------------------------------


_V2_DROP = ("nullable", "anyOf", "oneOf", "not", "allOf", "x-kubernetes-validations")


def _to_v2(schema: Any) -> Any:
    """A CRD's structural v3 schema as a real server publishes it in v2."""
    if isinstance(schema, list):
        return [_to_v2(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _V2_DROP:
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: _to_v2(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _to_v2(value)
        else:
            out[key] = value
    if schema.get("nullable") or schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return out


def _custom_schema(kind: Kind, version: str, ref: str) -> dict[str, Any]:
    raw = kind.schemas[version]
    schema = _to_v2(raw) if ref == V2_REF else copy.deepcopy(raw)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned "
                           "schema of this representation of an object."}
    props["kind"] = {"type": "string", "description": "Kind is a string value representing the "
                     "REST resource this object represents."}
    meta = {"$ref": ref + OBJECT_META}
    props["metadata"] = ({"allOf": [meta], "description": "Standard object's metadata."}
                         if ref == V3_REF else {**meta, "description": "Standard object's metadata."})
    schema.setdefault("type", "object")
    schema["x-kubernetes-group-version-kind"] = [_gvk(kind, version)]
    return schema


def _definitions(kinds: list[tuple[Kind, str]], ref: str) -> dict[str, Any]:
    roots: list[tuple[str, dict[str, Any] | None]] = [(builtin.OBJECT_META, None)]
    for kind, version in kinds:
        root = builtin.root_model(kind)
        if root is not None:
            roots.append((root, _gvk(kind, version)))
    defs = builtin.definitions(roots, ref)
    for kind, version in kinds:
        if kind.custom:
            defs[schema_name(kind, version)] = _custom_schema(kind, version, ref)
    return defs


# -- paths ---------------------------------------------------------------------------------


def _query(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "type": kind,
            "uniqueItems": True}


_DRY_RUN = _query("dryRun", "When present, indicates that modifications should not be "
                  "persisted. The only valid value is All.")
_FIELD_MANAGER = _query("fieldManager", "a name associated with the actor or entity making "
                        "these changes")
_FIELD_VALIDATION = _query("fieldValidation", "Ignore, Warn or Strict handling of unknown "
                           "fields; Strict refuses an object with unknown or duplicate fields")
_PRETTY = _query("pretty", "If 'true', then the output is pretty printed.")
_FORCE = _query("force", "Force is going to \"force\" Apply requests.", "boolean")
_LIST_QUERY = [_query("labelSelector", "A selector to restrict the list of returned objects "
                      "by their labels."),
               _query("fieldSelector", "A selector to restrict the list of returned objects by "
                      "their fields."),
               _query("resourceVersion", "Where the list or watch starts."),
               _query("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
               _query("watch", "Watch for changes to the described resources.", "boolean"),
               _query("allowWatchBookmarks", "Request watch events with type BOOKMARK.",
                      "boolean")]


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "type": "string",
            "uniqueItems": True, "description": f"{name} of the object"}


def _v2_operation(kind: Kind, version: str, action: str, params: list[dict[str, Any]],
                  body: str | None, code: str = "200", ref: str | None = None) -> dict[str, Any]:
    name = schema_name(kind, version)
    op: dict[str, Any] = {
        "description": f"{action} {kind.kind}",
        "operationId": f"{action}{kind.kind}",
        "consumes": ([t for t in PATCH_TYPES if not (kind.custom and "strategic" in t)]
                     if action == "patch" else ["*/*"]),
        "produces": PRODUCES,
        "parameters": list(params),
        "responses": {code: {"description": "OK", "schema": {"$ref": V2_REF + (ref or name)}},
                      "401": {"description": "Unauthorized"}},
        "schemes": ["https"],
        "tags": [kind.group or "core"],
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(kind, version),
    }
    if body is not None:
        op["parameters"].insert(0, {"name": "body", "in": "body", "required": True,
                                    "schema": {"$ref": V2_REF + body}})
    return op


def _kind_paths(kind: Kind, version: str) -> dict[str, Any]:
    base = "/" + _gv_path(kind.group, version)
    if kind.namespaced:
        base += "/namespaces/{namespace}"
    collection, item = f"{base}/{kind.plural}", f"{base}/{kind.plural}/{{name}}"
    name = schema_name(kind, version)
    writes = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION]
    scope = [_path_param("namespace")] if kind.namespaced else []
    patch_body = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
    paths: dict[str, Any] = {
        collection: {
            "get": _v2_operation(kind, version, "list", _LIST_QUERY, None, ref=name),
            "post": _v2_operation(kind, version, "post", writes, name, "201"),
            "delete": _v2_operation(kind, version, "deletecollection", _LIST_QUERY, None,
                                    ref="io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
            "parameters": [*scope, _PRETTY],
        },
        item: {
            "get": _v2_operation(kind, version, "get", [], None),
            "put": _v2_operation(kind, version, "put", writes, name),
            "patch": _v2_operation(kind, version, "patch", [*writes, _FORCE], patch_body),
            "delete": _v2_operation(kind, version, "delete", [_DRY_RUN], None,
                                    ref="io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
            "parameters": [_path_param("name"), *scope, _PRETTY],
        },
    }
    if kind.status_subresource:
        paths[item + "/status"] = {
            "get": _v2_operation(kind, version, "get", [], None),
            "put": _v2_operation(kind, version, "put", writes, name),
            "patch": _v2_operation(kind, version, "patch", [*writes, _FORCE], patch_body),
            "parameters": [_path_param("name"), *scope, _PRETTY],
        }
    return paths


_SUPPORT_DEFS = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.Patch": {
        "description": "Patch is provided to give a concrete name and type to the Kubernetes "
                       "PATCH request body.", "type": "object"},
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status": {
        "description": "Status is a return value for calls that don't return other objects.",
        "type": "object",
        "properties": {"code": {"type": "integer", "format": "int32"},
                       "message": {"type": "string"}, "reason": {"type": "string"},
                       "status": {"type": "string"}, "kind": {"type": "string"},
                       "apiVersion": {"type": "string"}}},
}


def v2_doc(registry: Registry) -> dict[str, Any]:
    """The swagger 2.0 document of every served kind (``/openapi/v2``)."""
    kinds = [(k, v) for k in registry.kinds if not k.read_only for v in k.versions]
    paths: dict[str, Any] = {}
    for kind, version in kinds:
        paths.update(_kind_paths(kind, version))
    definitions = {**_SUPPORT_DEFS, **_definitions(kinds, V2_REF)}
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": VERSION},
        "paths": dict(sorted(paths.items())),
        "definitions": dict(sorted(definitions.items())),
        "securityDefinitions": {"BearerToken": {
            "description": "Bearer Token authentication", "type": "apiKey",
            "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    }


# -- v3 --------------------------------------------------------------------------------------


def _v3_operation(kind: Kind, version: str, action: str) -> dict[str, Any]:
    params = [{"name": "fieldValidation", "in": "query",
               "description": _FIELD_VALIDATION["description"],
               "schema": {"type": "string", "uniqueItems": True}}]
    op: dict[str, Any] = {
        "operationId": f"{action}{kind.kind}",
        "parameters": params if action in ("post", "put", "patch") else [],
        "responses": {"200": {"description": "OK", "content": {"application/json": {
            "schema": {"$ref": V3_REF + schema_name(kind, version)}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(kind, version),
    }
    body = {"schema": {"$ref": V3_REF + schema_name(kind, version)}}
    if action == "patch":  # kubectl apply computes a strategic merge patch where one is listed
        types = [t for t in PATCH_TYPES if not (kind.custom and "strategic" in t)]
        patch = {"schema": {"$ref": V3_REF + "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}
        op["requestBody"] = {"content": {t: patch for t in types}, "required": True}
    elif action in ("post", "put"):
        op["requestBody"] = {"content": {t: body for t in ("application/json", "application/yaml")},
                             "required": True}
    return op


def group_version_doc(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    kinds = _served(registry, group, version)
    if not kinds:
        return None
    paths: dict[str, Any] = {}
    for kind in kinds:
        base = "/" + _gv_path(group, version)
        if kind.namespaced:
            base += "/namespaces/{namespace}"
        collection = f"{base}/{kind.plural}"
        paths[collection] = {"get": _v3_operation(kind, version, "list"),
                             "post": _v3_operation(kind, version, "post")}
        paths[collection + "/{name}"] = {
            "get": _v3_operation(kind, version, "get"),
            "put": _v3_operation(kind, version, "put"),
            "patch": _v3_operation(kind, version, "patch"),
            "delete": _v3_operation(kind, version, "delete"),
        }
    schemas = _definitions([(k, version) for k in kinds], V3_REF)
    schemas.update(_SUPPORT_DEFS)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def v3_docs(registry: Registry) -> dict[str, Any]:
    """``{"root": discovery, "api/v1": doc, "apis/<group>/<version>": doc, ...}``."""
    docs: dict[str, Any] = {}
    paths = {}
    gvs = {("", "v1")} | {(g, v) for g in registry.groups() for v in registry.group_versions(g)}
    for group, version in sorted(gvs):
        doc = group_version_doc(registry, group, version)
        if doc is not None:
            path = _gv_path(group, version)
            docs[path] = doc
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_digest(doc)}"}
    docs["root"] = {"paths": paths}
    return docs


