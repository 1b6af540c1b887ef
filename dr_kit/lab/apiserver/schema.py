"""Validation: CRD ``openAPIV3Schema`` (pruning, defaults, JSON schema) and core kinds.

Custom resources go through what the real API server does with a structural schema:
unknown fields are pruned (and reported, so ``fieldValidation=Strict`` can refuse them),
``null`` values of non-nullable fields are dropped, ``default`` values are filled in,
then the object is validated. Of the ``x-kubernetes-validations`` CEL rules only the
common ``self == oldSelf`` immutability rule is enforced.

Every problem is a *cause* ``{"reason", "message", "field"}``; the server turns a list of
causes into a 422 ``Invalid`` Status.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema

from .errors import cause
from .resources import Kind

Cause = dict[str, str]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[munkMGTPE]i?|Ki)?\Z")
_ROOT_KEEP = ("apiVersion", "kind", "metadata")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# -- pruning and defaulting --------------------------------------------------------------


def prune_and_default(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Prune unknown fields, drop non-nullable nulls and apply defaults, in place.

    Returns the paths of the pruned unknown fields.
    """
    unknown: list[str] = []
    _walk_object(obj, schema, "", unknown, root=True)
    return unknown


def _walk(value: Any, schema: dict[str, Any], path: str, unknown: list[str]) -> None:
    if isinstance(value, dict):
        _walk_object(value, schema, path, unknown)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _walk(item, items, _join(path, i), unknown)


def _walk_object(
    obj: dict[str, Any], schema: dict[str, Any], path: str, unknown: list[str], root: bool = False
) -> None:
    props = schema.get("properties")
    addl = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
    embedded = schema.get("x-kubernetes-embedded-resource", False)
    if props is not None:
        for key in list(obj):
            if root and key in _ROOT_KEEP:
                continue
            sub = props.get(key)
            if sub is None:
                if not preserve and not (embedded and key in _ROOT_KEEP):
                    unknown.append(_join(path, key))
                    del obj[key]
                continue
            if obj[key] is None and not sub.get("nullable", False):
                del obj[key]
        for key, sub in props.items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
        for key, sub in props.items():
            if key in obj and not (root and key == "metadata"):
                _walk(obj[key], sub, _join(path, key), unknown)
    elif isinstance(addl, dict):
        for key in list(obj):
            if obj[key] is None and not addl.get("nullable", False):
                del obj[key]
                continue
            _walk(obj[key], addl, _join(path, key), unknown)
    elif not preserve and addl is not True and schema.get("type") == "object" and not root:
        for key in list(obj):
            if not (embedded and key in _ROOT_KEEP):
                unknown.append(_join(path, key))
                del obj[key]


# -- JSON schema validation --------------------------------------------------------------


def _to_jsonschema(schema: Any) -> Any:
    """Translate an OpenAPI v3 (Kubernetes flavour) schema to draft-4 JSON schema."""
    if isinstance(schema, list):
        return [_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "nullable", "format"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: _to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = _to_jsonschema(value)
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "metadata" in out.get("properties", {}):
        out["properties"]["metadata"] = {"type": "object"}
    return out


class CompiledSchema:
    """One served version's schema, ready to prune, default and validate objects."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.raw = schema
        self.validator = jsonschema.Draft4Validator(_to_jsonschema(schema))

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = []
        errors = sorted(self.validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        for err in errors:
            causes.extend(_causes_of(err))
        return causes

    def immutable(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        """Enforce ``x-kubernetes-validations`` rules ``self == oldSelf`` on update."""
        causes: list[Cause] = []
        _check_immutable(new, old, self.raw, "", causes)
        return causes


def _path_of(err: jsonschema.ValidationError) -> str:
    path = ""
    for part in err.absolute_path:
        path = _join(path, part)
    return path


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _causes_of(err: jsonschema.ValidationError) -> list[Cause]:
    path = _path_of(err)
    if err.validator == "required":
        have = err.instance if isinstance(err.instance, dict) else {}
        return [
            cause(_join(path, name), "Required value", "FieldValueRequired")
            for name in err.validator_value
            if name not in have
        ]
    if err.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in err.validator_value)
        return [
            cause(
                path,
                f"Unsupported value: {_show(err.instance)}: supported values: {allowed}",
                "FieldValueNotSupported",
            )
        ]
    if err.validator == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return [
            cause(
                path,
                f'Invalid value: "{type(err.instance).__name__}": {path} in body must be '
                f"of type {want}: {_show(err.instance)}",
                "FieldValueTypeInvalid",
            )
        ]
    return [cause(path, f"Invalid value: {_show(err.instance)}: {err.message}")]


def _check_immutable(new: Any, old: Any, schema: dict[str, Any], path: str, out: list) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        if rule.get("rule", "").replace(" ", "") == "self==oldSelf" and new != old:
            out.append(cause(path, f"Invalid value: {_show(new)}: {rule.get('message', '')}"))
    if isinstance(new, dict) and isinstance(old, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in new and key in old:
                _check_immutable(new[key], old[key], sub, _join(path, key), out)


# -- metadata and core kinds ---------------------------------------------------------------


def validate_metadata(kind: Kind, obj: dict[str, Any]) -> list[Cause]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [cause("metadata", "Required value", "FieldValueRequired")]
    causes: list[Cause] = []
    name = meta.get("name")
    if not name:
        causes.append(
            cause("metadata.name", "Required value: name or generateName is required",
                  "FieldValueRequired")
        )
    elif not isinstance(name, str):
        causes.append(cause("metadata.name", f"Invalid value: {_show(name)}: must be a string"))
    else:
        label_only = kind.plural == "namespaces"
        rx, limit = (DNS1123_LABEL, 63) if label_only else (DNS1123_SUBDOMAIN, 253)
        if len(name) > limit or not rx.match(name):
            what = "RFC 1123 label" if label_only else "RFC 1123 subdomain"
            causes.append(
                cause(
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase {what} must consist of lower case '
                    "alphanumeric characters, '-' or '.', and must start and end with an "
                    f"alphanumeric character (at most {limit} characters)",
                )
            )
    for field_name in ("labels", "annotations"):
        if meta.get(field_name) is not None and not isinstance(meta[field_name], dict):
            causes.append(cause(f"metadata.{field_name}", "Invalid value: must be a map of strings"))
    labels: dict[str, Any] = meta["labels"] if isinstance(meta.get("labels"), dict) else {}
    for key, value in labels.items():
        causes.extend(_label_causes(key, value))
    annotations: dict[str, Any] = (meta["annotations"] if isinstance(meta.get("annotations"), dict)
                                   else {})
    total = 0
    for key, value in annotations.items():
        if not isinstance(value, str):
            causes.append(cause(f"metadata.annotations.{key}",
                                f"Invalid value: {_show(value)}: must be a string"))
            continue
        if not _qualified(key):
            causes.append(cause("metadata.annotations", f"Invalid value: {_show(key)}: "
                                + _QUALIFIED_RULE))
        total += len(key) + len(value)
    if total > 256 * 1024:
        causes.append(cause("metadata.annotations", "Too long: must have at most 262144 bytes",
                            "FieldValueTooLong"))
    fins = meta.get("finalizers")
    if fins is not None and (not isinstance(fins, list) or not all(isinstance(f, str) for f in fins)):
        causes.append(cause("metadata.finalizers", "Invalid value: must be a list of strings"))
    elif fins:
        for i, fin in enumerate(fins):
            if not _qualified(fin):
                causes.append(cause(f"metadata.finalizers[{i}]",
                                    f"Invalid value: {_show(fin)}: " + _QUALIFIED_RULE))
    refs = meta.get("ownerReferences")
    if isinstance(refs, list):
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict):
                causes.append(cause(f"metadata.ownerReferences[{i}]", "Invalid value: must be an object"))
                continue
            for f in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(f):
                    causes.append(cause(f"metadata.ownerReferences[{i}].{f}", "Required value",
                                        "FieldValueRequired"))
    return causes


_QUALIFIED_RULE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (at most 63 characters), with an optional DNS "
    "subdomain prefix and '/'"
)


def _qualified(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return False
    return bool(
        name and len(name) <= 63 and _LABEL_NAME.match(name)
        and (not prefix or (len(prefix) <= 253 and DNS1123_SUBDOMAIN.match(prefix)))
    )


def _label_causes(key: str, value: Any) -> list[Cause]:
    causes = []
    if not _qualified(key):
        causes.append(cause("metadata.labels", f"Invalid value: {_show(key)}: " + _QUALIFIED_RULE))
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        causes.append(
            cause("metadata.labels", f"Invalid value: {_show(value)}: a valid label value must "
                  "be 63 characters or less, empty or consisting of alphanumeric characters, "
                  "'-', '_' or '.', starting and ending with an alphanumeric character")
        )
    return causes


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _required(obj: dict[str, Any], *path: str) -> list[Cause]:
    if _get(obj, *path) in (None, "", [], {}):
        return [cause(".".join(path), "Required value", "FieldValueRequired")]
    return []


def _quantity(obj: dict[str, Any], *path: str) -> list[Cause]:
    value = _get(obj, *path)
    if value in (None, ""):
        return [cause(".".join(path), "Required value", "FieldValueRequired")]
    if not QUANTITY.match(str(value)):
        return [cause(".".join(path), f"Invalid value: {_show(value)}: must be a quantity")]
    return []


_PV_NON_SOURCE = {
    "accessModes", "capacity", "claimRef", "persistentVolumeReclaimPolicy", "storageClassName",
    "mountOptions", "volumeMode", "nodeAffinity", "volumeAttributesClassName",
}


def validate_core(kind: Kind, obj: dict[str, Any]) -> list[Cause]:
    """The handful of required fields of the built-in kinds that clients rely on."""
    if kind.group == "" and kind.plural == "persistentvolumeclaims":
        return _required(obj, "spec", "accessModes") + _quantity(
            obj, "spec", "resources", "requests", "storage"
        )
    if kind.group == "" and kind.plural == "persistentvolumes":
        causes = _required(obj, "spec", "accessModes") + _quantity(obj, "spec", "capacity", "storage")
        spec = obj.get("spec") or {}
        if not set(spec) - _PV_NON_SOURCE:
            causes.append(cause("spec", "Required value: must specify a volume type",
                                "FieldValueRequired"))
        return causes
    if kind.group == "" and kind.plural == "pods":
        containers = _get(obj, "spec", "containers")
        if not containers:
            return _required(obj, "spec", "containers")
        causes = []
        for i, c in enumerate(containers):
            for f in ("name", "image"):
                if not isinstance(c, dict) or not c.get(f):
                    causes.append(cause(f"spec.containers[{i}].{f}", "Required value",
                                        "FieldValueRequired"))
        return causes
    if kind.group == "storage.k8s.io" and kind.plural == "storageclasses":
        return _required(obj, "provisioner")
    if kind.group == "" and kind.plural == "events":
        return _required(obj, "involvedObject")
    if kind.group == "apps" and kind.plural == "deployments":
        causes = _required(obj, "spec", "selector") + _required(obj, "spec", "template")
        match = _get(obj, "spec", "selector", "matchLabels") or {}
        labels = _get(obj, "spec", "template", "metadata", "labels") or {}
        if any(labels.get(k) != v for k, v in match.items()):
            causes.append(cause("spec.template.metadata.labels",
                                "Invalid value: `selector` does not match template `labels`"))
        return causes
    if kind.group == "" and kind.plural in ("configmaps", "secrets"):
        causes = []
        for f in ("data", "stringData", "binaryData"):
            for key, value in (obj.get(f) or {}).items():
                if not isinstance(value, str):
                    causes.append(cause(f"{f}[{key}]", f"Invalid value: {_show(value)}: must be a string"))
        return causes
    return []
