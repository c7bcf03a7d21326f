"""The operator command's exit codes and its one-line error (see `cli`'s docstring)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_DIFFERENCES = 0, 1, 2, 3
EXIT_AWS, EXIT_PIRIOD, EXIT_NOT_STORED, EXIT_INTERNAL = 4, 5, 6, 7
EXIT_UNREACHABLE = 8  # send: nothing answers at the webhook's URL
EXIT_NO_TERMINAL = 9  # a question to ask, and no terminal to ask it on
EXIT_CLOSED_PIPE = 141  # standard output closed (`| head`): 128 + SIGPIPE, as a shell shows it

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


def one_line(text: str) -> str:
    """A message on one line: the lines of a library's message (a JMESPath error shows the
    expression and a caret under it) joined by a space."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def closed_pipe(out: TextIO) -> int:
    """Standard output was closed by its reader (`| head`): stop quietly, as a Unix tool
    killed by SIGPIPE does, with EXIT_CLOSED_PIPE. What is still buffered for it is dropped
    (the interpreter's own flush at exit would fail on it and say so)."""
    if out is sys.stdout or out is sys.__stdout__:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
            os.close(devnull)
        except (OSError, ValueError):  # pragma: no cover (no file descriptor to redirect)
            pass
    return EXIT_CLOSED_PIPE
