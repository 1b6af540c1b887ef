"""Kubernetes label selectors in their structured form (``matchLabels`` and
``matchExpressions``), as objects such as VolumeGroupReplication and VolumeGroupSnapshot
carry them.  One definition, used by the operator, the lab's control plane and plug-ins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SelectorError(ValueError):
    """A selector is malformed (e.g. an unknown operator)."""


def match_selector(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Evaluate a structured ``LabelSelector`` (matchLabels + matchExpressions).

    An empty selector matches everything (as for PVC selection); ``None`` matches nothing.
    """
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SelectorError(f"unknown selector operator {op!r}")
    return True
