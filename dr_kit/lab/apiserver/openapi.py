"""A minimal OpenAPI v3 discovery, enough for kubectl to validate on the server side.

kubectl (``create -f``/``apply``) first asks ``/openapi/v3`` whether a kind's PATCH accepts
the ``fieldValidation`` query parameter; if so it leaves validation to the server (which
prunes and refuses unknown fields of custom resources with ``fieldValidation=Strict``).
So each group-version document lists, per kind, the collection and item paths with their
``x-kubernetes-group-version-kind`` and that parameter, plus the CRD schemas for
``kubectl explain``. Built-in kinds carry no schema here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import Kind, Registry

_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "Ignore, Warn or Strict handling of unknown fields",
    "schema": {"type": "string", "uniqueItems": True},
}


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(kind: Kind, version: str) -> str:
    reverse = ".".join(reversed(kind.group.split("."))) if kind.group else "io.k8s.api.core"
    return f"{reverse}.{version}.{kind.kind}"


def _operation(kind: Kind, version: str, action: str) -> dict[str, Any]:
    return {
        "operationId": f"{action}{kind.kind}",
        "parameters": [_FIELD_VALIDATION],
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": kind.group, "version": version, "kind": kind.kind,
        },
    }


def group_version_doc(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    kinds = [k for k in registry.kinds_in(group, version) if not k.read_only]
    if not kinds:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind in kinds:
        base = "/" + _gv_path(group, version)
        if kind.namespaced:
            base += "/namespaces/{namespace}"
        collection = f"{base}/{kind.plural}"
        paths[collection] = {"post": _operation(kind, version, "post")}
        paths[collection + "/{name}"] = {
            "put": _operation(kind, version, "put"),
            "patch": _operation(kind, version, "patch"),
        }
        if kind.custom:
            schema = dict(kind.schemas[version])
            schema["x-kubernetes-group-version-kind"] = [
                {"group": group, "version": version, "kind": kind.kind}
            ]
            schemas[_schema_name(kind, version)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def root_doc(registry: Registry) -> dict[str, Any]:
    paths = {}
    gvs = {("", "v1")} | {(g, v) for g in registry.groups() for v in registry.group_versions(g)}
    for group, version in sorted(gvs):
        doc = group_version_doc(registry, group, version)
        if doc is not None:
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_digest(doc)}"}
    return {"paths": paths}
