"""dr_kit: consistent asynchronous copy of a Kubernetes namespace to a backup site.

The public surface is what this module exports; everything else is internal.
"""

from dr_kit.errors import Conflict, DrKitError, InvalidInput, JournalError, NotFound, Unavailable
from dr_kit.shop.consistency import Verdict, judge
from dr_kit.storage.position import JournalPosition, LagReport

__version__ = "0.1.0"

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
]
