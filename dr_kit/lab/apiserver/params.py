"""Query parameters, parsed as strictly as the real API server parses them.

A malformed value (``watch=maybe``, ``timeoutSeconds=nan``, ``limit=-1``,
``dryRun=Some``) is a 400 ``BadRequest`` naming the parameter, never a guess and never
an exception further down. Parameters the server does not know are ignored, as there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import bad_request

_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")
_INT = re.compile(r"^[+-]?[0-9]{1,19}\Z")
FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
PROPAGATION = ("Orphan", "Background", "Foreground")
INCLUDE_OBJECT = ("None", "Metadata", "Object")
RV_MATCH = ("NotOlderThan", "Exact")


def flag(q: Mapping[str, str], name: str) -> bool:
    """A boolean parameter (Go's ``strconv.ParseBool`` spellings; absent/empty = false)."""
    value = q.get(name, "")
    if value == "" or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise bad_request(f'invalid value for query parameter {name}: "{_clip(value)}" is not a boolean')


def integer(q: Mapping[str, str], name: str, minimum: int | None = None) -> int | None:
    """An int64 parameter, or None when absent."""
    value = q.get(name)
    if value is None or value == "":
        return None
    if not _INT.match(value) or not -(2**63) <= int(value) < 2**63:
        raise bad_request(
            f'invalid value for query parameter {name}: "{_clip(value)}" is not an integer'
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise bad_request(f"invalid value for query parameter {name}: must be at least {minimum}")
    return number


def choice(q: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = q.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise bad_request(
            f'invalid value for query parameter {name}: "{_clip(value)}" (supported values: '
            + ", ".join(allowed) + ")"
        )
    return value


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def resource_version(q: Mapping[str, str]) -> int | None:
    """``resourceVersion``: None for absent, "" or "0" (any version); else the number."""
    value = q.get("resourceVersion", "")
    if value in ("", "0"):
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise bad_request(f'invalid resourceVersion "{_clip(value)}": must be a number')
    return int(value)


@dataclass(frozen=True)
class ListParams:
    label_selector: str | None
    field_selector: str | None
    watch: bool
    bookmarks: bool
    since: int | None
    timeout: int | None
    limit: int | None


def list_params(q: Mapping[str, str]) -> ListParams:
    """The ``ListOptions`` of a list or watch request."""
    since = resource_version(q)
    match = choice(q, "resourceVersionMatch", RV_MATCH)
    if match and "resourceVersion" not in q:
        raise bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
    flag(q, "sendInitialEvents")
    choice(q, "includeObject", INCLUDE_OBJECT)
    return ListParams(
        label_selector=q.get("labelSelector"),
        field_selector=q.get("fieldSelector"),
        watch=flag(q, "watch"),
        bookmarks=flag(q, "allowWatchBookmarks"),
        since=since,
        timeout=integer(q, "timeoutSeconds", minimum=0),
        limit=integer(q, "limit", minimum=0),
    )


@dataclass(frozen=True)
class WriteParams:
    dry_run: bool
    strict: bool
    ignore: bool  # fieldValidation=Ignore: unknown fields are dropped without a warning

    def shown(self, warnings: list[str]) -> list[str]:
        return [] if self.ignore else warnings


def write_params(q: Mapping[str, str]) -> WriteParams:
    """``dryRun``, ``fieldValidation``, ``fieldManager`` and ``force`` of a write."""
    dry = q.getall("dryRun", []) if hasattr(q, "getall") else [q.get("dryRun", "")]
    for value in dry:
        if value not in ("All", ""):
            raise bad_request(f'invalid value for query parameter dryRun: "{_clip(value)}" '
                              '(supported values: All)')
    validation = choice(q, "fieldValidation", FIELD_VALIDATION)
    manager = q.get("fieldManager", "")
    if len(manager) > 128 or not manager.isprintable():
        raise bad_request("fieldManager must be at most 128 printable characters")
    flag(q, "force")
    integer(q, "gracePeriodSeconds")
    choice(q, "propagationPolicy", PROPAGATION)
    flag(q, "orphanDependents")
    return WriteParams(dry_run="All" in dry, strict=validation == "Strict",
                       ignore=validation == "Ignore")
