"""The one domain exception: the CLI prints it as a single line and exits with code 1."""

from __future__ import annotations


class AuditError(Exception):
    """A problem the user can fix: the message names the file (or key) and what to do."""

    def __init__(self, message: str, *, path: str | None = None, stage: str = "input") -> None:
        super().__init__(message)
        self.path = path
        self.stage = stage

    def __str__(self) -> str:
        message = super().__str__()
        if self.path and self.path not in message:
            return f"{self.path}: {message}"
        return message
