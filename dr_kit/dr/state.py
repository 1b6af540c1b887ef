"""A namespace's DR state: which site is primary, which operation runs, at which step.

The state lives on the clusters, as the namespace annotation ``dr-kit.io/dr-state`` at
both sites (JSON), so every process — the ``dr-kit dr`` command, the operator at either
site, the lab — reads the same truth, and a command killed at any step finds where it
was.  When one site cannot be reached (a failover), only the other one is written; the
copy with the higher revision ``rev`` wins when both are read again (:func:`merge`).

Pure: values, parsing and the rules about them, no I/O.

    {"primary": "main", "rev": 7, "epoch": 2,          # epoch: how many role swaps
     "operation": {"name": "relocate", "id": "...", "step": "promote", "done": [...],
                   "target": "backup", "started": 1700000000.0, "data": {...}} | null,
     "test": {"namespace": "shop-drtest", "snapshot": "...", "state": "running"} | null,
     "failover": {"from": "main", "at": ..., ...} | null,   # set by failover, cleared by failback
     "history": [{"op": "relocate", "primary": "backup", "at": ..., "epoch": 2}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dr_kit.errors import InvalidInput

ANNOTATION = "dr-kit.io/dr-state"
SITES = ("main", "backup")
OPERATIONS = ("test", "relocate", "failover", "failback")
HISTORY = 50  # entries kept in the annotation


def other(site: str) -> str:
    """The other site's name."""
    if site not in SITES:
        raise InvalidInput(f"a site is 'main' or 'backup', not {site!r}")
    return "backup" if site == "main" else "main"


@dataclass(frozen=True)
class Operation:
    """One DR operation in progress: its steps done so far and what they measured."""

    name: str
    id: str
    started: float
    step: str | None = None
    done: tuple[str, ...] = ()
    target: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "started": self.started, "step": self.step,
                "done": list(self.done), "target": self.target, "data": dict(self.data)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Operation:
        if d.get("name") not in OPERATIONS:
            raise InvalidInput(f"unknown DR operation {d.get('name')!r} in {ANNOTATION}")
        return cls(name=str(d["name"]), id=str(d.get("id") or ""), started=float(d.get("started") or 0),
                   step=d.get("step"), done=tuple(d.get("done") or ()), target=d.get("target"),
                   data=dict(d.get("data") or {}))


@dataclass(frozen=True)
class DrState:
    primary: str = "main"
    rev: int = 0
    epoch: int = 0
    operation: Operation | None = None
    test: Mapping[str, Any] | None = None
    failover: Mapping[str, Any] | None = None
    history: tuple[Mapping[str, Any], ...] = ()

    # -- reading ---------------------------------------------------------------------
    @property
    def secondary(self) -> str:
        return other(self.primary)

    @property
    def busy(self) -> bool:
        """An operation is running (started and not finished): hands off the roles."""
        return self.operation is not None

    @property
    def test_running(self) -> bool:
        return bool(self.test) and (self.test or {}).get("state") not in (None, "cleaned")

    def to_dict(self) -> dict[str, Any]:
        return {"primary": self.primary, "rev": self.rev, "epoch": self.epoch,
                "operation": self.operation.to_dict() if self.operation else None,
                "test": dict(self.test) if self.test else None,
                "failover": dict(self.failover) if self.failover else None,
                "history": [dict(h) for h in self.history]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    # -- changing (every change is a new revision) -------------------------------------
    def bump(self, **changes: Any) -> DrState:
        return replace(self, rev=self.rev + 1, **changes)

    def with_step(self, step: str | None, done: str | None = None, **data: Any) -> DrState:
        assert self.operation is not None
        op = self.operation
        merged = {**op.data, **data}
        return self.bump(operation=replace(op, step=step, data=merged,
                                           done=op.done + ((done,) if done and done not in op.done else ())))

    def swapped(self, new_primary: str) -> DrState:
        """The roles swapped: ``new_primary`` holds the primary copy now."""
        if new_primary == self.primary:
            return self
        return replace(self, primary=new_primary, epoch=self.epoch + 1)

    def finished(self, at: float, **entry: Any) -> DrState:
        """The running operation is over; it joins the history."""
        assert self.operation is not None
        h = {"op": self.operation.name, "id": self.operation.id, "primary": self.primary,
             "epoch": self.epoch, "started": self.operation.started, "at": at, **entry}
        return self.bump(operation=None, history=(*self.history, h)[-HISTORY:])


def parse(raw: str | None) -> DrState | None:
    """The state of one annotation value; None when there is none.  A value that cannot
    be read is an error: acting on a guess could replicate in the wrong direction."""
    if raw is None:
        return None
    try:
        d = json.loads(raw)
    except ValueError:
        d = None
    if not isinstance(d, dict) or d.get("primary") not in SITES:
        raise InvalidInput(f"annotation {ANNOTATION} is unreadable ({str(raw)[:80]!r}); it must be "
                           "JSON like {\"primary\": \"main\"}; fix it (or remove it when the main site "
                           "is primary) before any DR operation")
    op = d.get("operation")
    try:
        return DrState(primary=d["primary"], rev=int(d.get("rev") or 0), epoch=int(d.get("epoch") or 0),
                       operation=Operation.from_dict(op) if isinstance(op, dict) else None,
                       test=d.get("test") if isinstance(d.get("test"), dict) else None,
                       failover=d.get("failover") if isinstance(d.get("failover"), dict) else None,
                       history=tuple(h for h in d.get("history") or () if isinstance(h, dict)))
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"annotation {ANNOTATION} is unreadable: {e}") from None


def of_namespace(namespace: Mapping[str, Any] | None) -> DrState | None:
    """The state recorded on a namespace object (None: none recorded, or no namespace)."""
    if not namespace:
        return None
    ann = (namespace.get("metadata") or {}).get("annotations") or {}
    return parse(ann.get(ANNOTATION))


def merge(states: Iterable[DrState | None]) -> DrState:
    """The current state from the copies read at the sites: the highest revision wins; no
    copy at all means the main site is primary and nothing ever ran."""
    found = [s for s in states if s is not None]
    if not found:
        return DrState()
    return max(found, key=lambda s: s.rev)


def primary_of(own: Mapping[str, str] | None, peer: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(primary site, operation running) from a namespace's annotations at this site and,
    when observed, at the other site (the newer revision wins)."""
    states = [parse((a or {}).get(ANNOTATION)) for a in (own, peer) if a is not None]
    st = merge(states)
    return st.primary, st.busy


__all__ = ["ANNOTATION", "SITES", "OPERATIONS", "DrState", "Operation", "merge", "other",
           "of_namespace", "parse", "primary_of"]
