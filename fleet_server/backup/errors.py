"""The errors of backup and restore: one hierarchy, each with what to do next."""

from __future__ import annotations


class BackupError(Exception):
    """A backup or restore that could not be done; nothing was changed by a refused one."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


class ArchiveError(BackupError):
    """The archive is not a whole camfleet backup: corrupt, truncated, or something else."""


class NotFreshError(BackupError):
    """The restore target already holds state (a CA, a database, releases)."""


class DatabaseError(BackupError):
    """The database could not be dumped or loaded."""
