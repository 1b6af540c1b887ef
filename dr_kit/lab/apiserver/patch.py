"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch.

Every malformed patch is a 400 (or a 422 when a well-formed operation cannot apply, as a
``test`` that fails or a path that does not exist), never an exception of this module:
operations are checked before they run, array indexes are ASCII digits, and what
``copy`` operations may duplicate is bounded.

The strategic merge patch is the real API server's for built-in kinds: maps merge; lists
with a merge key (containers by ``name``, conditions by ``type``, ...) merge element by
element; ``finalizers`` merge as a set; the directives ``$patch`` (``replace``,
``delete``, ``merge``), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>`` and
``$setElementOrder/<field>`` are honoured; every other list is replaced. Custom
resources do not accept it (415), as on a real server.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from .errors import ApiError, bad_request

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"

MAX_OPERATIONS = 10_000
MAX_COPY_BYTES = 3 * 1024 * 1024  # what copy operations may add up to (the request limit)
_INDEX = re.compile(r"^(0|[1-9][0-9]*)\Z")


# -- merge patch ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Return ``target`` with ``patch`` merged in (``null`` deletes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- JSON patch ----------------------------------------------------------------------------


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise bad_request(f"jsonpatch: invalid JSON pointer {_show(pointer)}: must start with /")
    return [_unescape(t) for t in pointer[1:].split("/")]


def _show(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


def _parent(doc: Any, tokens: list[str], pointer: str) -> tuple[Any, str]:
    cur = doc
    for tok in tokens[:-1]:
        cur = _child(cur, tok, pointer)
    return cur, tokens[-1]


def _child(cur: Any, tok: str, pointer: str) -> Any:
    if isinstance(cur, dict):
        if tok not in cur:
            raise _missing(pointer)
        return cur[tok]
    if isinstance(cur, list):
        return cur[_index(cur, tok, pointer)]
    raise _missing(pointer)


def _index(lst: list, tok: str, pointer: str, allow_end: bool = False) -> int:
    if tok == "-" and allow_end:
        return len(lst)
    if not _INDEX.match(tok):
        raise bad_request(f"jsonpatch: invalid array index {_show(tok)} in {_show(pointer)}")
    i = int(tok)
    if i > len(lst) or (i == len(lst) and not allow_end):
        raise _missing(pointer)
    return i


def _missing(pointer: str) -> ApiError:
    return ApiError(
        422, "Invalid", "the server rejected our request due to an error in our request: "
        f"jsonpatch: path {_show(pointer)} does not exist"
    )


def _get(doc: Any, pointer: str) -> Any:
    cur = doc
    for tok in _split(pointer):
        cur = _child(cur, tok, pointer)
    return cur


def _add(doc: Any, pointer: str, value: Any) -> Any:
    tokens = _split(pointer)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, pointer)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, pointer, allow_end=True), value)
    else:
        raise _missing(pointer)
    return doc


def _remove(doc: Any, pointer: str) -> tuple[Any, Any]:
    tokens = _split(pointer)
    if not tokens:
        raise bad_request("jsonpatch: cannot remove the whole document")
    parent, last = _parent(doc, tokens, pointer)
    if isinstance(parent, dict):
        if last not in parent:
            raise _missing(pointer)
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, pointer))
    raise _missing(pointer)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


_OPS = {"add": ("value",), "remove": (), "replace": ("value",), "move": ("from",),
        "copy": ("from",), "test": ("value",)}


def _check_operation(i: int, op: Any) -> tuple[str, str]:
    if not isinstance(op, dict):
        raise bad_request(f"jsonpatch: operation {i} is not an object")
    kind = op.get("op")
    if not isinstance(kind, str) or kind not in _OPS:
        raise bad_request(f"jsonpatch: operation {i} has an unknown op {_show(kind)} "
                          "(add, remove, replace, move, copy or test)")
    path = op.get("path")
    if not isinstance(path, str):
        raise bad_request(f"jsonpatch: operation {i} ({kind}) needs a string path")
    for member in _OPS[kind]:
        if member not in op:
            raise bad_request(f"jsonpatch: operation {i} ({kind}) needs {member!r}")
    if "from" in _OPS[kind] and not isinstance(op["from"], str):
        raise bad_request(f"jsonpatch: operation {i} ({kind}) needs a string 'from'")
    return kind, path


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 operation list to a copy of ``target``."""
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    if len(operations) > MAX_OPERATIONS:
        raise ApiError(413, "RequestEntityTooLarge",
                       f"Request entity too large: the JSON patch has {len(operations)} "
                       f"operations, at most {MAX_OPERATIONS} are accepted")
    checked = [_check_operation(i, op) for i, op in enumerate(operations)]
    doc = copy.deepcopy(target)
    copied = 0
    for op, (kind, path) in zip(operations, checked, strict=True):
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc, _ = _remove(doc, path) if _split(path) else (doc, None)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "move":
            if path != op["from"] and path.startswith(op["from"] + "/"):
                raise bad_request(f"jsonpatch: cannot move {_show(op['from'])} into itself")
            doc, value = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "copy":
            value = _get(doc, op["from"])
            copied += len(json.dumps(value))
            if copied > MAX_COPY_BYTES:
                raise ApiError(413, "RequestEntityTooLarge",
                               "Request entity too large: the JSON patch's copy operations "
                               f"add more than {MAX_COPY_BYTES} bytes")
            doc = _add(doc, path, copy.deepcopy(value))
        elif not json_equal(_get(doc, path), op["value"]):
            raise ApiError(422, "Invalid", f"jsonpatch: test operation for path {_show(path)} "
                           "failed")
    return doc


# -- strategic merge patch -----------------------------------------------------------------

# Lists that merge element by element, by field name (the Go types' patchMergeKey tags of
# the built-in kinds this server serves); "" = a set of scalars.
MERGE_KEYS: dict[str, str] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "ports": "containerPort", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "volumes": "name", "imagePullSecrets": "name",
    "hostAliases": "ip", "conditions": "type", "ownerReferences": "uid",
    "finalizers": "", "topologySpreadConstraints": "topologyKey", "resourceClaims": "name",
    "schedulingGates": "name", "podIPs": "ip", "hostIPs": "ip",
}
_REPLACED = {("spec", "finalizers")}  # Namespace spec.finalizers is replaced, not merged
_DELETE_FROM = "$deleteFromPrimitiveList/"
_ORDER = "$setElementOrder/"


def _clean(value: Any) -> Any:
    """A patch value without directives, as stored when there is nothing to merge into."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_clean(v) for v in value
                if not (isinstance(v, dict) and v.get("$patch") in ("delete", "replace"))]
    return value


def strategic_merge(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to a copy of ``target`` (a JSON object)."""
    if not isinstance(patch, dict):
        raise bad_request("a strategic merge patch must be a JSON object")
    result = _merge_map(copy.deepcopy(target) if isinstance(target, dict) else {}, patch)
    return {} if result is None else result


def _merge_key(parent: str, field: str) -> str | None:
    if (parent, field) in _REPLACED:
        return None
    return MERGE_KEYS.get(field)


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], parent: str = ""
) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive is not None:
        if directive == "replace":
            return _clean({k: v for k, v in patch.items() if k != "$patch"})
        if directive == "delete":
            return None
        if directive != "merge":
            raise bad_request(f"strategic merge patch: unknown $patch directive {_show(directive)}")
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
            raise bad_request("strategic merge patch: $retainKeys must be a list of strings")
        original = {k: v for k, v in original.items() if k in retain}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith(_DELETE_FROM):
            field = key[len(_DELETE_FROM):]
            if not isinstance(value, list):
                raise bad_request(f"strategic merge patch: {key} must be a list")
            if isinstance(original.get(field), list):
                original[field] = [v for v in original[field]
                                   if not any(json_equal(v, d) for d in value)]
        elif key.startswith(_ORDER):
            if not isinstance(value, list):
                raise bad_request(f"strategic merge patch: {key} must be a list")
            orders[key[len(_ORDER):]] = value
        elif key.startswith("$"):
            if key not in ("$patch", "$retainKeys"):
                raise bad_request(f"strategic merge patch: unknown directive {_show(key)}")
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            original.pop(key, None)
            continue
        old = original.get(key)
        merge_key = _merge_key(parent, key)
        if isinstance(value, dict) and isinstance(old, dict):
            merged = _merge_map(old, value, key)
            if merged is None:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                original.pop(key, None)
            else:
                original[key] = _clean(value)
        elif isinstance(value, list) and merge_key is not None:
            original[key] = _merge_list(old if isinstance(old, list) else [], value,
                                        merge_key, key)
        else:
            original[key] = _clean(value)
    for key, order in orders.items():
        if isinstance(original.get(key), list):
            original[key] = _reorder(original[key], order, _merge_key(parent, key) or "")
    return original


def _merge_list(original: list[Any], patch: list[Any], merge_key: str, field: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return _clean(patch)
    if not merge_key:  # a set of scalars (finalizers)
        merged = list(original)
        for item in patch:
            if isinstance(item, (dict, list)):
                raise bad_request(f"strategic merge patch: {field} holds scalars, not "
                                  f"{type(item).__name__}s")
            if not any(json_equal(item, m) for m in merged):
                merged.append(item)
        return merged
    merged = list(original)
    for item in patch:
        if not isinstance(item, dict):
            raise bad_request(f"strategic merge patch: {field} items must be objects")
        if merge_key not in item:
            raise bad_request(f"strategic merge patch: an item of {field} lacks its merge key "
                              f"{merge_key!r}")
        key = item[merge_key]
        at = next((i for i, m in enumerate(merged)
                   if isinstance(m, dict) and json_equal(m.get(merge_key), key)), None)
        if item.get("$patch") == "delete":
            merged = [m for m in merged
                      if not (isinstance(m, dict) and json_equal(m.get(merge_key), key))]
        elif at is None:
            merged.append(_clean(item))
        else:
            result = _merge_map(merged[at], item, field)
            if result is None:
                del merged[at]
            else:
                merged[at] = result
    return merged


def _reorder(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    def key_of(item: Any) -> Any:
        return item.get(merge_key) if merge_key and isinstance(item, dict) else item

    wanted = [key_of(o) if merge_key else o for o in order]
    placed, rest = [], list(items)
    for w in wanted:
        for i, item in enumerate(rest):
            if json_equal(key_of(item), w):
                placed.append(rest.pop(i))
                break
    return placed + rest


# -- dispatch ------------------------------------------------------------------------------


def apply_patch(
    target: dict[str, Any], content_type: str, body: Any, custom: bool = False
) -> dict[str, Any]:
    """Dispatch on the request's content type (``custom``: the kind is a custom resource)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == MERGE:
        if not isinstance(body, dict):
            raise bad_request("a merge patch must be a JSON object")
        return merge_patch(target, body)
    if ctype == STRATEGIC and not custom:
        return strategic_merge(target, body)
    if ctype == JSON_PATCH:
        result = json_patch(target, body)
        if not isinstance(result, dict):
            raise bad_request("the patched object is not a JSON object")
        return result
    accepted = [JSON_PATCH, MERGE] if custom else [JSON_PATCH, MERGE, STRATEGIC]
    hint = (" (strategic merge patch is not supported for custom resources; use a merge "
            "patch, e.g. kubectl patch --type merge)") if ctype == STRATEGIC else ""
    raise ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted) + hint,
    )
