"""The Piriod stand-in in its own process, driven over its /_standin/ control routes.

Piriod is remote in production, so benchmarks, the fault suite and `sam local` (whose
containers reach it over the Docker bridge) run the stand-in apart from the code under test.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import urllib3

from piriod_devkit.aws import free_port
from piriod_devkit.process import ServerProcess


class StandinProcess(ServerProcess):
    name = "Piriod stand-in"

    def __init__(
        self,
        token: str,
        workspace: str,
        hosts: tuple[str, ...] = ("127.0.0.1",),
        port: int | None = None,
    ) -> None:
        super().__init__()
        self.token, self.workspace, self.hosts = token, workspace, hosts
        self.port = port or free_port(hosts[0])
        self._http = urllib3.PoolManager()

    @property
    def url(self) -> str:
        return f"http://{self.hosts[0]}:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "piriod_devkit.piriod_standin",
            "--quiet",
            "--port",
            str(self.port),
            "--token",
            self.token,
            "--workspace",
            self.workspace,
        ]
        for host in self.hosts:
            argv += ["--host", host]
        return argv

    def ready(self) -> bool:
        try:
            return bool(self._control("GET", "health").get("ok", True))
        except (urllib3.exceptions.HTTPError, ValueError):
            return False

    def _control(self, method: str, route: str, body: Any = None) -> dict[str, Any]:
        response = self._http.request(
            method,
            f"{self.url}/_standin/{route}",
            body=json.dumps(body).encode() if body is not None else None,
            headers={"content-type": "application/json"},
            timeout=urllib3.Timeout(connect=1, read=10),
            retries=False,
        )
        if response.status >= 400:
            raise ValueError(f"stand-in control {route}: HTTP {response.status} {response.data!r}")
        return json.loads(response.data) if response.data else {}

    def add_fault(self, kind: str, **kwargs: Any) -> None:
        self._control("POST", "faults", {"kind": kind, **kwargs})

    def clear_faults(self) -> None:
        self._control("DELETE", "faults")

    def set_tokens(self, *tokens: str) -> None:
        self._control("POST", "tokens", {"tokens": list(tokens)})

    def set_unmetered_lines(self, *lines: int) -> None:
        self._control("POST", "unmetered", {"lines": list(lines)})

    def usages(self, test_mode: bool | None = None) -> list[dict[str, Any]]:
        query = "" if test_mode is None else f"?test_mode={'true' if test_mode else 'false'}"
        entries: list[dict[str, Any]] = self._control("GET", f"ledger{query}")["usages"]
        return entries

    def violations(self) -> list[str]:
        found: list[str] = self._control("GET", "violations")["violations"]
        return found

    def reset(self) -> None:
        self._control("POST", "reset")
