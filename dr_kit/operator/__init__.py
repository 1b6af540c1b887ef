"""The namespace operator: label a namespace, get one consistency group for all its PVCs.

Layout: :mod:`.policy` (configuration), :mod:`.reconcile` (the pure decision),
:mod:`.backends` (manifest builders per backend), :mod:`.runner` (watch loop on the
official client), :mod:`.manifests` (deployment and RBAC), :mod:`.cli` (commands).
"""

from dr_kit.operator.policy import HitachiSettings, Policy, ReplicationClass
from dr_kit.operator.reconcile import Action, Event, Plan, Ref, reconcile

__all__ = ["Action", "Event", "HitachiSettings", "Plan", "Policy", "Ref", "ReplicationClass",
           "reconcile"]
