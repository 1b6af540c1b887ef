"""The one error root of dr_kit and the few subclasses callers branch on.

Every error raised for bad input or an unusable state is a :class:`DrKitError`; its
message is one line that says what was wrong and what to do.  The command line prints
``error: <message>`` and exits with status 2 for these, never a traceback.
"""

from __future__ import annotations


class DrKitError(Exception):
    """Root of every error dr_kit raises on purpose."""

    exit_code = 2


class InvalidInput(DrKitError):
    """A parameter or argument is wrong; retrying with the same input is useless."""


class NotFound(DrKitError):
    """A named object (volume, group, snapshot, namespace, ...) does not exist."""


class Conflict(DrKitError):
    """The request clashes with the current state (already exists, already a member, ...)."""


class JournalError(DrKitError):
    """A journal entry is corrupt, missing or out of order; it was not applied."""


class Unavailable(DrKitError):
    """A site, array, link or database cannot be reached now; a later retry may work."""


__all__ = ["DrKitError", "InvalidInput", "NotFound", "Conflict", "JournalError", "Unavailable"]
