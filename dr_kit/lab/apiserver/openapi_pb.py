"""``/openapi/v2`` as protobuf: the ``openapi.v2.Document`` message of gnostic-models.

client-go (hence kubectl) fetches the v2 document with ``Accept:
application/com.github.proto-openapi.spec.v2@v1.0+protobuf`` and unmarshals it as that
message, so a JSON answer would not do. This encodes the swagger document built by
:mod:`.openapi` into it: the document, info, paths with their operations, parameters and
responses, definitions (schemas, recursively) and vendor extensions (``x-...`` values
carried as YAML text, which JSON is). Field numbers are those of gnostic's
``openapiv2/OpenAPIv2.proto``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

CONTENT_TYPES = (
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
)


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _str(num: int, value: Any) -> bytes:
    return _len(num, str(value).encode()) if value not in (None, "") else b""


def _strs(num: int, values: Any) -> bytes:
    return b"".join(_len(num, str(v).encode()) for v in values or [])


def _bool(num: int, value: Any) -> bytes:
    return _varint(num << 3) + b"\x01" if value is True else b""


def _int(num: int, value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        return b""
    return _varint(num << 3) + _varint(value)


def _double(num: int, value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return b""
    return _varint(num << 3 | 1) + struct.pack("<d", float(value))


def _any(num: int, value: Any) -> bytes:
    """An ``Any`` carrying ``value`` as YAML (field 2); JSON text is YAML."""
    return _len(num, _str(2, json.dumps(value, separators=(",", ":"))))


def _named_any(num: int, name: str, value: Any) -> bytes:
    return _len(num, _str(1, name) + _any(2, value))


def _extensions(num: int, obj: dict[str, Any]) -> bytes:
    return b"".join(_named_any(num, k, v) for k, v in obj.items() if k.startswith("x-"))


def schema(s: dict[str, Any]) -> bytes:
    out = [_str(1, s.get("$ref")), _str(2, s.get("format")), _str(3, s.get("title")),
           _str(4, s.get("description"))]
    if "default" in s:
        out.append(_any(5, s["default"]))
    out += [_double(6, s.get("multipleOf")), _double(7, s.get("maximum")),
            _bool(8, s.get("exclusiveMaximum")), _double(9, s.get("minimum")),
            _bool(10, s.get("exclusiveMinimum")), _int(11, s.get("maxLength")),
            _int(12, s.get("minLength")), _str(13, s.get("pattern")),
            _int(14, s.get("maxItems")), _int(15, s.get("minItems")),
            _bool(16, s.get("uniqueItems")), _int(17, s.get("maxProperties")),
            _int(18, s.get("minProperties")), _strs(19, s.get("required"))]
    out += [_any(20, v) for v in s.get("enum") or []]
    addl = s.get("additionalProperties")
    if isinstance(addl, dict):
        out.append(_len(21, _len(1, schema(addl))))
    elif isinstance(addl, bool):
        out.append(_len(21, _varint(2 << 3) + (b"\x01" if addl else b"\x00")))
    kind = s.get("type")
    if kind:
        out.append(_len(22, _strs(1, kind if isinstance(kind, list) else [kind])))
    items = s.get("items")
    if isinstance(items, (dict, list)):
        listed = items if isinstance(items, list) else [items]
        out.append(_len(23, b"".join(_len(1, schema(i)) for i in listed if isinstance(i, dict))))
    out += [_len(24, schema(a)) for a in s.get("allOf") or [] if isinstance(a, dict)]
    props = s.get("properties")
    if isinstance(props, dict):
        out.append(_len(25, b"".join(_len(1, _str(1, k) + _len(2, schema(v)))
                                     for k, v in props.items() if isinstance(v, dict))))
    out += [_str(26, s.get("discriminator")), _bool(27, s.get("readOnly"))]
    if "example" in s:
        out.append(_any(30, s["example"]))
    out.append(_extensions(31, s))
    return b"".join(out)


def _parameter(p: dict[str, Any]) -> bytes:
    if p.get("in") == "body":
        body = (_str(1, p.get("description")) + _str(2, p.get("name")) + _str(3, "body")
                + _bool(4, p.get("required")) + _len(5, schema(p.get("schema") or {})))
        return _len(1, _len(1, body))  # ParametersItem.parameter -> Parameter.body_parameter
    if p.get("in") == "path":  # PathParameterSubSchema
        sub = (_bool(1, p.get("required")) + _str(2, "path") + _str(3, p.get("description"))
               + _str(4, p.get("name")) + _str(5, p.get("type")) + _bool(19, p.get("uniqueItems")))
        non_body = _len(4, sub)
    else:  # QueryParameterSubSchema
        sub = (_bool(1, p.get("required")) + _str(2, "query") + _str(3, p.get("description"))
               + _str(4, p.get("name")) + _str(6, p.get("type")) + _bool(20, p.get("uniqueItems")))
        non_body = _len(3, sub)
    return _len(1, _len(2, non_body))


def _operation(op: dict[str, Any]) -> bytes:
    responses = b"".join(
        _len(1, _str(1, code) + _len(2, _len(1, _str(1, r.get("description")) + (
            _len(2, _len(1, schema(r["schema"]))) if "schema" in r else b""))))
        for code, r in (op.get("responses") or {}).items()
    )
    return b"".join([
        _strs(1, op.get("tags")), _str(2, op.get("summary")), _str(3, op.get("description")),
        _str(5, op.get("operationId")), _strs(6, op.get("produces")),
        _strs(7, op.get("consumes")),
        b"".join(_len(8, _parameter(p)) for p in op.get("parameters") or []),
        _len(9, responses), _strs(10, op.get("schemes")), _extensions(13, op),
    ])


_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: dict[str, Any]) -> bytes:
    out = [_len(num, _operation(item[m])) for m, num in _METHODS.items() if m in item]
    out += [_len(9, _parameter(p)) for p in item.get("parameters") or []]
    out.append(_extensions(10, item))
    return b"".join(out)


def document(doc: dict[str, Any]) -> bytes:
    """The protobuf encoding of a swagger 2.0 document (as built by :func:`.openapi.v2_doc`)."""
    info = doc.get("info") or {}
    paths = b"".join(_len(2, _str(1, p) + _len(2, _path_item(item)))
                     for p, item in (doc.get("paths") or {}).items())
    definitions = b"".join(_len(1, _str(1, name) + _len(2, schema(s)))
                           for name, s in (doc.get("definitions") or {}).items())
    security = b"".join(
        _len(12, b"".join(_len(1, _str(1, k) + _len(2, _strs(1, v))) for k, v in req.items()))
        for req in doc.get("security") or [])
    sec_defs = b"".join(
        _len(1, _str(1, name) + _len(2, _len(2, _str(1, d.get("type")) + _str(2, d.get("name"))
                                             + _str(3, d.get("in"))
                                             + _str(4, d.get("description")))))
        for name, d in (doc.get("securityDefinitions") or {}).items())
    return b"".join([
        _str(1, doc.get("swagger")), _len(2, _str(1, info.get("title")) + _str(2, info.get("version"))),
        _len(8, paths), _len(9, definitions), security, _len(13, sec_defs),
    ])
