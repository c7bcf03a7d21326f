"""The operator command's exit codes and its one-line error (see `cli`'s docstring)."""

from __future__ import annotations

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_DIFFERENCES = 0, 1, 2, 3
EXIT_AWS, EXIT_PIRIOD, EXIT_NOT_STORED, EXIT_INTERNAL = 4, 5, 6, 7

# What to do when the command does not know which adapter it is aimed at.
NO_STACK = (
    "give --stack NAME, or export the functions' variables (PIRIOD_WORKSPACE_ID, "
    "PIRIOD_TOKEN_SECRET_ID, WEBHOOK_SECRET_ID, REPLAY_QUEUE_URL, DEAD_LETTER_QUEUE_URL, "
    "IDEMPOTENCY_TABLE; see docs/operations.md)"
)


class CommandError(Exception):
    """A one-line error for the operator, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
