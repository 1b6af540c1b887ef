"""Request bodies to JSON values, refusing what a real API server cannot represent.

A body becomes a JSON value (dicts with string keys, lists, strings, finite numbers,
booleans, ``None``) or an :class:`~.errors.ApiError` 400/415, never an exception the
server did not expect:

- the media type picks the decoder (JSON by default, YAML, the Kubernetes protobuf
  envelope); anything else is 415, as on a real API server;
- ``NaN``, ``Infinity`` and numbers beyond a float64 are refused: JSON has no such
  values, and once stored they would break every client reading the object;
- nesting is bounded (:data:`MAX_DEPTH` levels of objects and arrays), so no later step
  (copying, patching, validating, encoding) can run out of stack;
- YAML is read as a real server reads it (``sigs.k8s.io/yaml``): timestamps stay
  strings, scalar keys become strings, and alias expansion is bounded.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from . import protobuf
from .errors import ApiError, bad_request

MAX_DEPTH = 100
MAX_NODES = 1_000_000  # values in one YAML document, aliases expanded

JSON = "application/json"
YAML = "application/yaml"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
OBJECT_TYPES = (JSON, YAML, protobuf.CONTENT_TYPE)
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH)
_YAML_TYPES = (YAML, "application/x-yaml", "text/yaml", APPLY_PATCH)
_INT64 = 2**63 - 1


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (empty -> JSON)."""
    mt = (content_type or "").split(";")[0].strip().lower()
    return mt or JSON


def unsupported(accepted: tuple[str, ...]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )


def decode(raw: bytes, content_type: str | None, accepted: tuple[str, ...]) -> Any:
    """The JSON value of a request body sent as ``content_type`` (``None`` if empty)."""
    mt = media_type(content_type)
    if mt not in accepted and not (mt in _YAML_TYPES and YAML in accepted):
        raise unsupported(accepted)
    if not raw:
        return None
    if mt == protobuf.CONTENT_TYPE:
        return protobuf.decode(raw)
    if mt in _YAML_TYPES:
        return loads_yaml(raw)
    return loads_json(raw)


# -- JSON ----------------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {_clip(text)} is out of range")
    return value


def _int(text: str) -> int:
    value = int(text)
    if abs(value) > _INT64 and not math.isfinite(float(text)):
        raise _Refused(f"the number {_clip(text)} is out of range")
    return value


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def loads_json(raw: bytes | str) -> Any:
    """Strict JSON: finite numbers only, at most :data:`MAX_DEPTH` levels."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise _too_deep() from None
    except _Refused as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, digit limits
        raise bad_request(f"the request body is not valid JSON: {_clip(str(e), 120)}") from None
    check_depth(value)
    return value


def _too_deep() -> ApiError:
    return bad_request(
        f"the request body is nested too deeply (more than {MAX_DEPTH} levels of objects "
        "and arrays)"
    )


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise 400 when ``value`` nests objects/arrays more than ``limit`` levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise _too_deep()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


# -- YAML ----------------------------------------------------------------------------------

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):
    """Safe YAML without timestamp resolution (a date stays the string it was)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def loads_yaml(raw: bytes | str) -> Any:
    """One YAML document as a JSON value (the JSON subset of YAML included)."""
    try:
        doc = yaml.load(raw, Loader=_Loader)  # noqa: S506 - a safe loader
    except RecursionError:
        raise _too_deep() from None
    except yaml.YAMLError as e:
        raise bad_request(f"the request body is not valid YAML: {_clip(str(e), 200)}") from None
    except ValueError as e:  # e.g. integer digit limits
        raise bad_request(f"the request body is not valid YAML: {_clip(str(e), 120)}") from None
    return to_json_value(doc)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, (int, float)):
        return json.dumps(_scalar(key))
    raise bad_request(f"the request body has a map key that is not a string: {_clip(repr(key))}")


def _scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"the request body is not valid: {value} is not a JSON number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64:
        try:
            float(value)
        except OverflowError:
            raise bad_request("the request body is not valid: a number is out of range") from None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise bad_request(
        f"the request body holds a YAML {type(value).__name__} value, which has no JSON form"
    )


def to_json_value(doc: Any) -> Any:
    """Copy a parsed YAML document into plain JSON values (iteratively, bounded)."""
    if not isinstance(doc, (dict, list)):
        return _scalar(doc)
    root: Any = {} if isinstance(doc, dict) else []
    stack: list[tuple[Any, Any, int]] = [(doc, root, 1)]
    nodes = 0
    while stack:
        src, dst, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for key, value in items:
            nodes += 1
            if nodes > MAX_NODES:
                raise bad_request(
                    f"the request body expands to more than {MAX_NODES} values "
                    "(excessive YAML aliasing)"
                )
            if isinstance(value, (dict, list)):
                child: Any = {} if isinstance(value, dict) else []
                stack.append((value, child, depth + 1))
            else:
                child = _scalar(value)
            if isinstance(dst, dict):
                dst[_key(key)] = child
            else:
                dst.append(child)
    return root
