"""dr_kit: consistent asynchronous copy of a Kubernetes namespace to a backup site.

The public surface is what this module exports; everything else is internal.
"""

from dr_kit.errors import Conflict, DrKitError, InvalidInput, JournalError, NotFound, Unavailable
from dr_kit.shop.consistency import Verdict, judge
from dr_kit.storage.position import JournalPosition, LagReport

__version__ = "0.1.0"

# The analyst library (pandas, the Kubernetes client) loads on first use, so that
# `import dr_kit` and the command line stay fast: name -> defining module.
_LAZY = {
    "Site": "dr_kit.sites", "ProgressEvent": "dr_kit.sites", "side_by_side": "dr_kit.sites",
    "GroupLag": "dr_kit.lag", "read_lag": "dr_kit.lag", "sample_lag": "dr_kit.lag",
    "lag_percentiles": "dr_kit.lag", "serve_metrics": "dr_kit.lag",
    "SnapshotGroup": "dr_kit.snapshots", "create_snapshot_group": "dr_kit.snapshots",
    "list_snapshot_groups": "dr_kit.snapshots", "restore_snapshot_group": "dr_kit.snapshots",
    "delete_snapshot_group": "dr_kit.snapshots", "open_snapshot_databases": "dr_kit.snapshots",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dr_kit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Conflict",
    "DrKitError",
    "InvalidInput",
    "JournalError",
    "JournalPosition",
    "LagReport",
    "NotFound",
    "Unavailable",
    "Verdict",
    "judge",
    "__version__",
    *_LAZY,
]
