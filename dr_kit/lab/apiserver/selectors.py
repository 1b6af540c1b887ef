"""Label and field selectors, in the string syntax of the Kubernetes API.

``parse_label_selector("app=shop,tier in (db,cache),!legacy")`` returns a predicate on a
labels dict; ``parse_field_selector("metadata.name=x")`` a predicate on a whole object.
``match_selector`` evaluates the structured form (``matchLabels``/``matchExpressions``)
that objects such as VolumeGroupReplication carry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from dr_kit.labels import SelectorError, match_selector

LabelPredicate = Callable[[Mapping[str, str]], bool]
ObjectPredicate = Callable[[Mapping[str, Any]], bool]

_KEY_RE = re.compile(r"^([A-Za-z0-9.\-]+/)?[A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?\Z")
_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
_SET_RE = re.compile(r"^(?P<key>[^\s!=<>(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\Z")
_CMP_RE = re.compile(r"^(?P<key>[^\s!=<>(),]+)\s*(?P<op>==|!=|=|<|>)\s*(?P<value>[^\s!=<>(),]*)\Z")


def _split_top_level(text: str) -> list[str]:
    """The comma-separated requirements; an empty one (``a,,b``, ``a,``) is an error."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parenthesis in selector {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise SelectorError(f"unbalanced parenthesis in selector {text!r}")
    parts.append("".join(current))
    parts = [p.strip() for p in parts]
    if any(not p for p in parts):
        raise SelectorError(f"found ',' without a requirement on both sides in selector {text!r}")
    return parts


def _check_key(key: str, text: str) -> str:
    prefix, _, name = key.rpartition("/")
    if not _KEY_RE.match(key) or len(name) > 63 or len(prefix) > 253:
        raise SelectorError(f"invalid label key {key!r} in selector {text!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise SelectorError(f"invalid label value {value!r} in selector {text!r}")
    return value


def _requirement(req: str, text: str) -> LabelPredicate:
    if req.startswith("!"):
        key = _check_key(req[1:].strip(), text)
        return lambda labels: key not in labels
    m = _SET_RE.match(req)
    if m:
        key = _check_key(m.group("key"), text)
        values = frozenset(
            _check_value(v.strip(), text) for v in m.group("values").split(",") if v.strip()
        )
        if not values:
            raise SelectorError(f"empty value set in selector {text!r}")
        if m.group("op") == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    m = _CMP_RE.match(req)
    if m:
        key = _check_key(m.group("key"), text)
        op, value = m.group("op"), m.group("value")
        if op in ("<", ">"):
            try:
                bound = int(value)
            except ValueError:
                raise SelectorError(f"{op} needs an integer in selector {text!r}") from None
            return _numeric(key, op, bound)
        value = _check_value(value, text)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    key = _check_key(req, text)
    return lambda labels: key in labels


def _numeric(key: str, op: str, bound: int) -> LabelPredicate:
    def pred(labels: Mapping[str, str]) -> bool:
        try:
            n = int(labels[key])
        except (KeyError, ValueError):
            return False
        return n > bound if op == ">" else n < bound

    return pred


def parse_label_selector(text: str | None) -> LabelPredicate:
    """Compile a label selector string; an empty selector matches everything."""
    if not text or not text.strip():
        return lambda labels: True
    preds = [_requirement(r, text) for r in _split_top_level(text)]
    return lambda labels: all(p(labels) for p in preds)


def _field_value(obj: Mapping[str, Any], path: str) -> str | None:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return None if cur is None else str(cur)


COMMON_FIELDS = ("metadata.name", "metadata.namespace")


class UnsupportedField(SelectorError):
    """A field selector names a field the kind does not support (400, as on a real server)."""


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _split_term(term: str) -> tuple[str, str, str] | None:
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op):]
        i += 1
    return None


def _unescape(value: str, text: str) -> str:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise SelectorError(f"invalid escape sequence in field selector {text!r}")
            out.append(value[i + 1])
            i += 2
            continue
        if ch in ",=":
            raise SelectorError(f"unescaped {ch!r} in field selector {text!r}")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_field_selector(
    text: str | None, supported: tuple[str, ...] | None = None
) -> ObjectPredicate:
    """Compile a field selector (``path=value``, ``path==value``, ``path!=value``).

    With ``supported``, only those field paths may be used (anything else raises
    :class:`UnsupportedField`, as a real API server refuses unknown field labels). A
    missing field compares as the empty string. Values escape ``\\``, ``,`` and ``=``
    with a backslash.
    """
    if not text or not text.strip():
        return lambda obj: True
    preds: list[ObjectPredicate] = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue  # as on a real server: empty terms are skipped
        parts = _split_term(term)
        if parts is None:
            raise SelectorError(f"invalid field selector {text!r}: {term!r} has no operator")
        path, op, raw = parts[0].strip(), parts[1], parts[2]
        if supported is not None and path not in supported:
            raise UnsupportedField(f"field label not supported: {path}")
        if not path:
            raise SelectorError(f"invalid field selector {text!r}: a term has no field")
        value = _unescape(raw, text)

        def pred(obj: Mapping[str, Any], path=path, op=op, value=value) -> bool:
            actual = _field_value(obj, path) or ""
            return actual != value if op == "!=" else actual == value

        preds.append(pred)
    return lambda obj: all(p(obj) for p in preds)


__all__ = [
    "COMMON_FIELDS",
    "SelectorError",
    "UnsupportedField",
    "match_selector",
    "parse_field_selector",
    "parse_label_selector",
]
