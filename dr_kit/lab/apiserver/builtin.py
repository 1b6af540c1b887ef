"""The structure of the built-in kinds, read from the official client's generated models.

The ``kubernetes`` package carries one model class per API type, generated from the
Kubernetes OpenAPI document: each lists its fields with their JSON names and types
(``openapi_types``/``attribute_map``), and the newer ones their descriptions and required
fields. From them this module knows, for every built-in kind the server serves, what a
real API server's typed decoding knows:

- :func:`conform` checks an object's shape (a string where a string belongs, a map of
  strings for labels, integers for ``replicas``, base64 for Secret data, RFC 3339 times,
  quantities) and, as typed decoding does, drops ``null`` fields and unknown fields
  (returned, so the server can warn or, with ``fieldValidation=Strict``, refuse) and
  stores quantities in canonical form. A wrong type is a 400 ``BadRequest`` naming the
  field: nothing badly typed is ever stored, so nothing read back can break a client;
- :func:`definitions` gives the OpenAPI definitions (``io.k8s.api.core.v1.Pod`` ...) that
  ``/openapi/v2`` and ``/openapi/v3`` publish for ``kubectl explain`` and validation.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
from dataclasses import dataclass
from typing import Any

from . import quantity
from .resources import Kind

ROOTS = {
    ("", "namespaces"): "V1Namespace",
    ("", "persistentvolumeclaims"): "V1PersistentVolumeClaim",
    ("", "persistentvolumes"): "V1PersistentVolume",
    ("", "pods"): "V1Pod",
    ("", "events"): "CoreV1Event",
    ("", "configmaps"): "V1ConfigMap",
    ("", "secrets"): "V1Secret",
    ("storage.k8s.io", "storageclasses"): "V1StorageClass",
    ("apps", "deployments"): "V1Deployment",
    ("apiextensions.k8s.io", "customresourcedefinitions"): "V1CustomResourceDefinition",
}
OBJECT_META = "V1ObjectMeta"
_META_TYPES = {"ObjectMeta", "ListMeta", "LabelSelector", "LabelSelectorRequirement",
               "OwnerReference", "ManagedFieldsEntry", "Status", "StatusDetails",
               "StatusCause", "Condition", "DeleteOptions", "Preconditions"}
_APPS_TYPES = {"Deployment", "DeploymentSpec", "DeploymentStatus", "DeploymentStrategy",
               "DeploymentCondition", "RollingUpdateDeployment"}
_STORAGE_TYPES = {"StorageClass"}
_QUANTITY_FIELDS = {"limits", "requests", "capacity", "allocatable", "allocatedResources",
                    "sizeLimit", "overhead"}
_INT_OR_STRING = {("V1TCPSocketAction", "port"), ("V1HTTPGetAction", "port"),
                  ("V1GRPCAction", "port"), ("V1RollingUpdateDeployment", "maxSurge"),
                  ("V1RollingUpdateDeployment", "maxUnavailable")}
_NOT_MERGED = {("V1NamespaceSpec", "finalizers")}  # replaced by a strategic merge patch
_LIST = re.compile(r"^(?:List|list)\[(.+)\]\Z")
_MAP = re.compile(r"^(?:Dict\[str, ?(.+)\]|dict\(str, ?(.+)\))\Z")
_INT64 = 2**63
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z")


@dataclass(frozen=True)
class Type:
    """One field's type: a scalar kind, a list/map of ``item``, or the model ``model``."""

    kind: str  # string integer number boolean time bytes quantity int-or-string any list map model
    item: Type | None = None
    model: str = ""

    def describe(self, plural: bool = False) -> str:
        if self.kind in ("list", "map"):
            inner = self.item.describe(plural=True) if self.item else "values"
            noun = self.kind + ("s" if plural else "")
            return f"{noun} of {inner}" if plural else f"a {noun} of {inner}"
        if self.kind == "model":
            return "objects" if plural else "an object"
        if plural:
            return {"string": "strings", "integer": "integers", "number": "numbers",
                    "boolean": "booleans", "time": "RFC 3339 times", "bytes": "base64 strings",
                    "quantity": "quantities", "int-or-string": "integers or strings",
                    "any": "values"}[self.kind]
        return {"string": "a string", "integer": "an integer", "number": "a number",
                "boolean": "a boolean", "time": "an RFC 3339 time (a string)",
                "bytes": "base64 data (a string)", "quantity": "a quantity",
                "int-or-string": "an integer or a string", "any": "any value"}[self.kind]


@dataclass(frozen=True)
class Field:
    name: str  # JSON name
    type: Type
    description: str
    required: bool


@dataclass(frozen=True)
class Model:
    name: str  # the client's class name, e.g. V1PersistentVolumeClaimSpec
    description: str
    fields: dict[str, Field]


def _models() -> Any:
    import kubernetes.client.models as models  # heavy import: only when first needed

    return models


_SCALARS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
            "datetime": "time", "date": "string", "bytes": "bytes", "object": "any"}


def _parse_type(text: str, owner: str, field: str) -> Type:
    text = text.strip()
    if m := _LIST.match(text):
        return Type("list", _parse_type(m.group(1), owner, field))
    if m := _MAP.match(text):
        return Type("map", _parse_type(m.group(1) or m.group(2), owner, field))
    if text in _SCALARS:
        kind = _SCALARS[text]
        if kind == "any" and (owner, field) in _INT_OR_STRING:
            kind = "int-or-string"
        return Type(kind)
    return Type("model", model=text)


def _doc_of(cls: type, attr: str) -> str:
    fields = getattr(cls, "model_fields", None)
    if fields and attr in fields:
        return fields[attr].description or ""
    prop = getattr(cls, attr, None)  # older generated clients: the property's docstring
    doc = getattr(prop, "__doc__", None) or ""
    lines = [ln.strip() for ln in doc.split("\n")]
    body = [ln.replace("# noqa: E501", "").strip() for ln in lines[1:]
            if ln and not ln.startswith(":")]
    return " ".join(body).strip()


def _class_doc(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    if doc.startswith("NOTE") or not doc:
        return ""
    return " ".join(doc.split("Attributes:")[0].split()).replace("# noqa: E501", "").strip()


@functools.cache
def model(name: str) -> Model | None:
    """The model named like the client's class (``V1PodSpec``), or None if unknown."""
    cls = getattr(_models(), name, None)
    types = getattr(cls, "openapi_types", None)
    names = getattr(cls, "attribute_map", None)
    if cls is None or not isinstance(types, dict) or not isinstance(names, dict):
        return None
    pyd = getattr(cls, "model_fields", None) or {}
    fields = {}
    for attr, text in types.items():
        json_name = str(names.get(attr, attr))
        ftype = _parse_type(text, name, json_name)
        if json_name in _QUANTITY_FIELDS:
            if ftype.kind == "string":
                ftype = Type("quantity")
            elif ftype.kind == "map" and ftype.item and ftype.item.kind == "string":
                ftype = Type("map", Type("quantity"))
        required = bool(attr in pyd and pyd[attr].is_required())
        fields[json_name] = Field(json_name, ftype, _doc_of(cls, attr), required)
    return Model(name, _class_doc(cls), fields)


def root_model(kind: Kind) -> str | None:
    return ROOTS.get(kind.key)


# -- conformance -----------------------------------------------------------------------------


class Problems:
    """What :func:`conform` found: type errors (refused) and unknown fields (dropped)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.unknown: list[str] = []


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _zero(t: Type) -> Any:
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "bytes": "",
            "quantity": "0", "list": [], "map": {}, "model": {}}.get(t.kind)


def _value(value: Any, t: Type, path: str, out: Problems) -> Any:
    """``value`` checked against ``t`` (returned, possibly normalized)."""
    if value is None:
        return _zero(t)
    kind = t.kind
    if kind == "any":
        return value
    if kind == "model":
        if not isinstance(value, dict):
            return _wrong(value, t, path, out)
        m = model(t.model)
        if m is not None:
            _object(value, m, path, out)
        return value
    if kind == "list":
        if not isinstance(value, list):
            return _wrong(value, t, path, out)
        assert t.item is not None
        for i, item in enumerate(value):
            value[i] = _value(item, t.item, _join(path, i), out)
        return value
    if kind == "map":
        if not isinstance(value, dict):
            return _wrong(value, t, path, out)
        assert t.item is not None
        for key in list(value):
            value[key] = _value(value[key], t.item, _join(path, key), out)
        return value
    if kind == "string":
        return value if isinstance(value, str) else _wrong(value, t, path, out)
    if kind == "boolean":
        return value if isinstance(value, bool) else _wrong(value, t, path, out)
    if kind in ("integer", "int-or-string"):
        if isinstance(value, str) and kind == "int-or-string":
            return value
        if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64:
            return value
        if isinstance(value, float) and not isinstance(value, bool):
            out.errors.append(f"{path}: expected an integer, got the number {value}")
            return value
        return _wrong(value, t, path, out)
    if kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        return _wrong(value, t, path, out)
    if kind == "time":
        if isinstance(value, str) and (value == "" or _TIME.match(value)) and _valid_time(value):
            return value
        out.errors.append(f'{path}: expected an RFC 3339 time such as "2025-01-31T12:00:00Z", '
                          f"got {_show(value)}")
        return value
    if kind == "bytes":
        if isinstance(value, str):
            try:
                base64.b64decode(value, validate=True)
                return value
            except (binascii.Error, ValueError):
                pass
        out.errors.append(f"{path}: expected base64 data, got {_show(value)}")
        return value
    if kind == "quantity":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return _wrong(value, t, path, out)
        try:
            return quantity.canonical(value)
        except quantity.InvalidQuantity as e:
            out.errors.append(f"{path}: {_show(value)}: {e}")
            return value
    return value  # pragma: no cover - every kind is handled above


def _valid_time(text: str) -> bool:
    if not text:
        return True
    try:
        dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00").replace("t", "T"))
    except ValueError:
        return False
    return True


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else _got(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _wrong(value: Any, t: Type, path: str, out: Problems) -> Any:
    out.errors.append(f"{path}: expected {t.describe()}, got {_got(value)}")
    return value


def _object(obj: dict[str, Any], m: Model, path: str, out: Problems) -> None:
    for key in list(obj):
        field = m.fields.get(key)
        if field is None:
            out.unknown.append(_join(path, key))
            del obj[key]
            continue
        if obj[key] is None:
            del obj[key]
            continue
        obj[key] = _value(obj[key], field.type, _join(path, key), out)


def conform(kind: Kind, obj: dict[str, Any]) -> Problems:
    """Check and normalize a built-in object in place (metadata only for custom kinds)."""
    out = Problems()
    name = root_model(kind)
    if name is not None and kind.key != ("apiextensions.k8s.io", "customresourcedefinitions"):
        m = model(name)
        if m is not None:
            _object(obj, m, "", out)
            return out
    for key in ("apiVersion", "kind"):
        if key in obj and not isinstance(obj[key], str):
            out.errors.append(f"{key}: expected a string, got {_got(obj[key])}")
    if obj.get("metadata") is not None:
        obj["metadata"] = _value(obj["metadata"], Type("model", model=OBJECT_META), "metadata",
                                 out)
    return out


# -- OpenAPI definitions ---------------------------------------------------------------------


def definition_name(model_name: str) -> str:
    """``V1PersistentVolumeClaimSpec`` -> ``io.k8s.api.core.v1.PersistentVolumeClaimSpec``."""
    m = re.match(r"^(?:CoreV1|V1)(.+)$", model_name)
    short = m.group(1) if m else model_name
    if short in _META_TYPES:
        return f"io.k8s.apimachinery.pkg.apis.meta.v1.{short}"
    if short in _APPS_TYPES:
        return f"io.k8s.api.apps.v1.{short}"
    if short in _STORAGE_TYPES:
        return f"io.k8s.api.storage.v1.{short}"
    if short.startswith("CustomResource") or short in ("JSONSchemaProps", "ExternalDocumentation",
                                                       "ValidationRule", "SelectableField",
                                                       "WebhookConversion", "WebhookClientConfig",
                                                       "ServiceReference"):
        return f"io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.{short}"
    return f"io.k8s.api.core.v1.{short}"


def _schema(t: Type, ref: str, models: set[str]) -> dict[str, Any]:
    if t.kind == "model":
        models.add(t.model)
        return {"$ref": ref + definition_name(t.model)}
    if t.kind in ("list", "map"):
        assert t.item is not None
        inner = _schema(t.item, ref, models)
        key = "items" if t.kind == "list" else "additionalProperties"
        return {"type": "array" if t.kind == "list" else "object", key: inner}
    return {
        "string": {"type": "string"}, "integer": {"type": "integer", "format": "int64"},
        "number": {"type": "number", "format": "double"}, "boolean": {"type": "boolean"},
        "time": {"type": "string", "format": "date-time"},
        "bytes": {"type": "string", "format": "byte"},
        "quantity": {"$ref": ref + "io.k8s.apimachinery.pkg.api.resource.Quantity"},
        "int-or-string": {"$ref": ref + "io.k8s.apimachinery.pkg.util.intstr.IntOrString"},
        "any": {"type": "object"},
    }[t.kind]


def _patch_meta(model_name: str, f: Field) -> dict[str, Any]:
    """The list merge semantics a real server publishes (kubectl computes its patches by them)."""
    from .patch import MERGE_KEYS  # the strategic merge patch's own table

    if f.type.kind != "list" or f.name not in MERGE_KEYS or (model_name, f.name) in _NOT_MERGED:
        return {}
    key = MERGE_KEYS[f.name]
    if not key:
        return {"x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"}
    return {"x-kubernetes-list-map-keys": [key], "x-kubernetes-list-type": "map",
            "x-kubernetes-patch-merge-key": key, "x-kubernetes-patch-strategy": "merge"}


_QUANTITY_DEF = {
    "description": "Quantity is a fixed-point representation of a number, such as 64Mi, "
                   "500m or 1.5; it is stored in canonical form.",
    "type": "string",
}
_INT_OR_STRING_DEF = {
    "description": "IntOrString is a type that can hold an int32 or a string.",
    "type": "string", "format": "int-or-string",
}


def definitions(roots: list[tuple[str, dict[str, Any] | None]], ref: str) -> dict[str, Any]:
    """OpenAPI definitions of ``roots`` (model name, group-version-kind) and all they use.

    ``ref`` prefixes references: ``#/definitions/`` (v2) or ``#/components/schemas/`` (v3).
    """
    out: dict[str, Any] = {
        "io.k8s.apimachinery.pkg.api.resource.Quantity": dict(_QUANTITY_DEF),
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString": dict(_INT_OR_STRING_DEF),
    }
    gvks = {name: gvk for name, gvk in roots}
    todo = [name for name, _ in roots]
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        m = model(name)
        if m is None:
            continue
        used: set[str] = set()
        props = {}
        for f in m.fields.values():
            schema = _schema(f.type, ref, used)
            schema.update(_patch_meta(name, f))
            if f.description:
                schema = ({"allOf": [schema], "description": f.description}
                          if "$ref" in schema and ref.startswith("#/components")
                          else {**schema, "description": f.description})
            props[f.name] = schema
        doc: dict[str, Any] = {"type": "object", "properties": props}
        if m.description:
            doc["description"] = m.description
        required = sorted(f.name for f in m.fields.values() if f.required)
        if required:
            doc["required"] = required
        if gvks.get(name):
            doc["x-kubernetes-group-version-kind"] = [gvks[name]]
        out[definition_name(name)] = doc
        todo.extend(used - done)
    return out
