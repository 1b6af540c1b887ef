"""Just enough of the Kubernetes protobuf encoding to read what kubectl's typed commands send.

``kubectl create namespace|configmap|secret`` post ``application/vnd.kubernetes.protobuf``
bodies. This decodes the ``k8s\\x00`` envelope (``runtime.Unknown``) and, inside it, the
object metadata of any kind plus the fields of Namespace, ConfigMap and Secret. Other kinds
are refused with 415 so the client gets a clear answer; every response is JSON, which
kubectl also accepts.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from typing import Any

from .errors import ApiError

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

Fields = dict[int, list[Any]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> Fields:
    """Parse one message into {field number: [raw values]} (bytes for length-delimited)."""
    out: Fields = defaultdict(list)
    data = _bytes(data)
    pos = 0
    value: int | bytes
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
        out[number].append(value)
    return out


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("a field has the wrong wire type")
    return value


def _message(f: Fields, n: int) -> Fields:
    return fields(_bytes(f[n][-1])) if f.get(n) else {}


def _str(f: Fields, n: int) -> str | None:
    return _bytes(f[n][-1]).decode() if f.get(n) else None


def _strs(f: Fields, n: int) -> list[str]:
    return [_bytes(v).decode() for v in f.get(n, [])]


def _map(f: Fields, n: int, binary: bool = False) -> dict[str, str] | None:
    if not f.get(n):
        return None
    out = {}
    for entry in f[n]:
        e = fields(_bytes(entry))
        key = _str(e, 1) or ""
        raw = _bytes(e[2][-1]) if e.get(2) else b""
        out[key] = base64.b64encode(raw).decode() if binary else raw.decode()
    return out


def _metadata(data: bytes) -> dict[str, Any]:
    f = fields(data)
    meta: dict[str, Any] = {}
    for n, key in ((1, "name"), (2, "generateName"), (3, "namespace"), (6, "resourceVersion")):
        if _str(f, n):
            meta[key] = _str(f, n)
    for n, key in ((11, "labels"), (12, "annotations")):
        value = _map(f, n)
        if value is not None:
            meta[key] = value
    if f.get(14):
        meta["finalizers"] = _strs(f, 14)
    return meta


def _namespace(f: Fields) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if f.get(2):
        obj["spec"] = {"finalizers": _strs(_message(f, 2), 1)}
    return obj


def _configmap(f: Fields) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if (data := _map(f, 2)) is not None:
        obj["data"] = data
    if (binary := _map(f, 3, binary=True)) is not None:
        obj["binaryData"] = binary
    if f.get(4):
        obj["immutable"] = bool(f[4][-1])
    return obj


def _secret(f: Fields) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if (data := _map(f, 2, binary=True)) is not None:
        obj["data"] = data
    if _str(f, 3):
        obj["type"] = _str(f, 3)
    if (string_data := _map(f, 4)) is not None:
        obj["stringData"] = string_data
    if f.get(5):
        obj["immutable"] = bool(f[5][-1])
    return obj


_KINDS = {("v1", "Namespace"): _namespace, ("v1", "ConfigMap"): _configmap,
          ("v1", "Secret"): _secret}


def decode(body: bytes) -> dict[str, Any]:
    """The JSON-shaped object of a protobuf request body, or ApiError 415/400."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "protobuf body without the k8s envelope")
    try:
        envelope = fields(body[len(MAGIC):])
        type_meta = _message(envelope, 1)
        api_version, kind = _str(type_meta, 1) or "", _str(type_meta, 2) or ""
        decoder = _KINDS.get((api_version, kind))
        if decoder is None:
            raise ApiError(
                415, "UnsupportedMediaType",
                f"protobuf bodies are understood only for Namespace, ConfigMap and Secret, "
                f"not {kind or 'this kind'}; send JSON (e.g. kubectl apply -f) instead",
            )
        raw = _message(envelope, 2)
        obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
        obj["metadata"] = _metadata(_bytes(raw[1][-1])) if raw.get(1) else {}
        obj.update(decoder(raw))
        return obj
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ApiError(400, "BadRequest", f"cannot decode the protobuf body: {e}") from None
