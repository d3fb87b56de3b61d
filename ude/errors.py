"""The one exception type for errors a user can cause (files, specs, configs)."""

from __future__ import annotations


class UdeError(Exception):
    """A user-facing error: the message names the file, the place and the fix.

    The command-line entry points print ``str(err)`` on one line and exit with status 2.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        where: str | None = None,
        fix: str | None = None,
    ):
        parts = [p for p in (source, where) if p]
        text = (": ".join(parts) + ": " if parts else "") + message
        if fix:
            text += f" ({fix})"
        super().__init__(text)
        self.source = source
        self.where = where
        self.fix = fix
