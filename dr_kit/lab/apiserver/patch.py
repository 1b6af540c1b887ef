"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Strategic merge patch is applied as a merge patch: for the kinds the kit patches
(labels, annotations, finalizers, spec and status fields) that is what clients expect,
except that lists are replaced instead of merged by key.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


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


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise bad_request(f"invalid JSON pointer {pointer!r}")
    return [_unescape(t) for t in pointer[1:].split("/")]


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
    if not tok.isdigit():
        raise bad_request(f"invalid array index {tok!r} in JSON pointer {pointer!r}")
    i = int(tok)
    if i > len(lst) or (i == len(lst) and not allow_end):
        raise _missing(pointer)
    return i


def _missing(pointer: str) -> ApiError:
    return ApiError(
        422, "Invalid", f"the server rejected our request due to an error in our request: "
        f"jsonpatch: path {pointer!r} does not exist"
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


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 operation list to a copy of ``target``."""
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc, _ = _remove(doc, path) if _split(path) else (doc, None)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            doc, value = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise ApiError(
                    422, "Invalid", f"jsonpatch: test operation for path {path!r} failed"
                )
        else:
            raise bad_request(f"unknown JSON patch operation {kind!r}")
    return doc


def _drop_directives(patch: Any) -> Any:
    """Remove strategic-merge directives (``$patch``, ``$setElementOrder/...``, ...)."""
    if isinstance(patch, dict):
        return {k: _drop_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_drop_directives(v) for v in patch]
    return patch


def apply_patch(target: dict[str, Any], content_type: str, body: Any) -> dict[str, Any]:
    """Dispatch on the request's content type."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in (MERGE, STRATEGIC):
        if not isinstance(body, dict):
            raise bad_request("a merge patch must be a JSON object")
        if ctype == STRATEGIC:
            body = _drop_directives(body)
        return merge_patch(target, body)
    if ctype == JSON_PATCH:
        result = json_patch(target, body)
        if not isinstance(result, dict):
            raise bad_request("the patched object is not a JSON object")
        return result
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC}",
    )
