"""A local server in a child process: started, waited for until it answers, and stopped.

Every child runs in a process group of its own (`start_new_session`), and stopping it ends
the whole group: SIGINT first (what Ctrl-C sends: the SAM CLI stops its Lambda containers
then, and does not on SIGKILL), SIGTERM if the group is still there after a grace period,
SIGKILL last.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any, Self

# The signals that stop a process group, each with the seconds it is given to work.
STOP_SIGNALS: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 10.0),
    (signal.SIGTERM, 10.0),
    (signal.SIGKILL, 10.0),
)


def stop_group(
    process: subprocess.Popen[Any],
    signals: tuple[tuple[signal.Signals, float], ...] = STOP_SIGNALS,
) -> None:
    """End `process`, started with `start_new_session=True`, and every process in its group:
    each signal in turn goes to the whole group until the process has exited; a child that
    outlived it is then killed too (the group id stays reserved while any member lives, so
    only this group's processes are signalled)."""
    group = process.pid
    for sig, grace in signals:
        if process.poll() is not None:
            break
        _signal_group(group, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    if process.poll() is None:
        process.wait()  # SIGKILL was sent: it is on its way out
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


class ServerProcess:
    """Subclasses give the command line (`argv`) and a readiness check (`ready`)."""

    name = "server"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        self._process = subprocess.Popen(  # noqa: S603 (argv built by the subclass)
            self.argv(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if self._process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self._process.returncode}")
                if self.ready():
                    return self
                time.sleep(0.1)
            raise RuntimeError(f"{self.name} did not answer within {timeout} s")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None:
            stop_group(self._process)
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
