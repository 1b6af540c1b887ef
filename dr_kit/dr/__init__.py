"""Disaster-recovery operations on a protected namespace: a DR test that never pauses
replication, a planned relocation with zero loss, a failover with fencing, a failback by
changed regions.  See :mod:`dr_kit.dr.ops` (the operations), :mod:`dr_kit.dr.state` (the
DR state recorded on the clusters) and :mod:`dr_kit.dr.manifests` (what is written to
the clusters).

This package stays light to import: the operator reads :mod:`dr_kit.dr.state`.
"""

from __future__ import annotations
