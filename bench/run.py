"""The benchmark suite: the adapter next to a naive baseline (bench/naive.py), measured in
the same run against the same local stand-ins (moto server and the Piriod stand-in, each in
its own process, AWS requests counted by bench/aws_counter.py in front of moto).

    make bench                   # or: .venv/bin/python bench/run.py [--quick]

Writes bench/results.json and bench/results.md and prints the table: each target next to its
measurement (median, with the spread) and the ratio to the naive baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CONCURRENCY = 16
LATENCY = 0.050
RECORDS = 100
FLOOR = math.ceil(RECORDS / CONCURRENCY) * LATENCY


@dataclass
class Figure:
    """One measured figure: its samples, and how it is judged."""

    name: str
    unit: str
    target: str
    ours: list[float] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)
    meets: Callable[[float], bool] | None = None

    @staticmethod
    def middle(samples: list[float]) -> float:
        return statistics.median(samples) if samples else float("nan")

    def row(self) -> dict[str, Any]:
        ours, naive = self.middle(self.ours), self.middle(self.naive)
        return {
            "figure": self.name,
            "unit": self.unit,
            "target": self.target,
            "median": ours,
            "min": min(self.ours, default=float("nan")),
            "max": max(self.ours, default=float("nan")),
            "runs": len(self.ours),
            "naive_median": naive,
            "met": bool(self.meets(ours)) if self.meets else None,
        }


# --- the stand-ins -----------------------------------------------------------------------------


class Counter:
    """bench/aws_counter.py in its own process, in front of moto."""

    def __init__(self, target: str) -> None:
        from piriod_devkit.aws import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "aws_counter.py"),
                "--port",
                str(self.port),
                "--target",
                target,
            ]
        )
        self.http = urllib3.PoolManager()
        for _ in range(100):
            try:
                self.http.request("GET", self.url + "/__counts", retries=False)
                return
            except urllib3.exceptions.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the AWS request counter did not start")

    def reset(self) -> None:
        self.http.request("POST", self.url + "/__reset")

    def total(self) -> int:
        return int(json.loads(self.http.request("GET", self.url + "/__counts").data)["total"])

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


@dataclass
class Lab:
    moto: Any
    piriod: Any
    counter: Counter
    dead: str
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, *, piriod_up: bool = True, counted: bool = False) -> dict[str, str]:
        from piriod_devkit.aws import function_environment, provision
        from piriod_devkit.events import LOCAL_SIGNING_SECRET

        resources = provision(self.moto.url, token="bench", signing_secrets=[LOCAL_SIGNING_SECRET])
        return function_environment(
            resources,
            piriod_url=self.piriod.url if piriod_up else self.dead,
            workspace="acc_bench",
            endpoint=self.counter.url if counted else self.moto.url,
            POST_CONCURRENCY=str(CONCURRENCY),
            POWERTOOLS_LOG_LEVEL="ERROR",
            POWERTOOLS_METRICS_DISABLED="true",
            SETTLE_AFTER_SECONDS="0",
            REPLAY_BACKOFF_SECONDS="0",
        )


@contextmanager
def lab() -> Iterator[Lab]:
    from piriod_devkit.aws import MotoServer, free_port
    from piriod_devkit.standin_process import StandinProcess

    with MotoServer() as moto, StandinProcess(token="bench", workspace="acc_bench") as piriod:
        counter = Counter(moto.url)
        try:
            yield Lab(moto, piriod, counter, f"http://127.0.0.1:{free_port()}")
        finally:
            counter.stop()


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    from piriod_adapter.runtime import reset_runtime

    reset_runtime()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_runtime()


_lines = iter(range(1_000_000, 10_000_000))


def delivery(records: int) -> dict[str, Any]:
    from piriod_devkit.events import http_event, sign_event

    usages = [
        {"subscription_line": next(_lines), "date_time": "2026-11-01T10:00:00Z", "quantity": 1.25}
        for _ in range(records)
    ]
    body = usages[0] if records == 1 else {"usages": usages}
    event = http_event("POST", "/v1/usages", json.dumps(body).encode())
    return sign_event(event)


def handlers() -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    import naive

    from piriod_adapter.handlers.webhook import lambda_handler

    return {"ours": lambda_handler, "naive": naive.webhook_handler}


def invoke(handler: Any, event: dict[str, Any]) -> tuple[int, float, float]:
    """(status, wall seconds, CPU seconds of this process) of one invocation."""
    from piriod_devkit.events import LambdaContext

    wall, cpu = time.perf_counter(), time.process_time()
    answer = handler(event, LambdaContext(timeout_seconds=25.0))
    return answer["statusCode"], time.perf_counter() - wall, time.process_time() - cpu


# --- the figures -----------------------------------------------------------------------------


def cold_start(env_lab: Lab, runs: int) -> tuple[Figure, Figure, Figure, Figure]:
    importing = Figure(
        "handler import, above `import boto3`", "ms", "≤ 150 ms", meets=lambda v: v <= 150
    )
    cold = Figure("cold process to 202 ÷ `import boto3`", "×", "≤ 1.8×", meets=lambda v: v <= 1.8)
    rss = Figure("peak RSS of the function process", "MiB", "≤ 100 MB", meets=lambda v: v <= 100)
    boto = Figure("`import boto3` (reference)", "ms", "—")
    interpreter = [sys.executable, "-X", "frozen_modules=on"]
    boto_process, boto_import = [], []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run(
            [
                *interpreter,
                "-c",
                "import time; t = time.perf_counter(); import boto3; print(time.perf_counter() - t)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        boto_process.append(time.perf_counter() - started)
        boto_import.append(float(out.stdout))
    boto.ours = [v * 1000 for v in boto_import]
    boto.naive = boto.ours
    env = env_lab.environment()
    for which in ("ours", "naive"):
        for _ in range(runs):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
                json.dump([delivery(1), delivery(RECORDS)], handle)
            started = time.time()
            out = subprocess.run(
                [
                    *interpreter,
                    str(BENCH / "cold.py"),
                    "adapter" if which == "ours" else "naive",
                    handle.name,
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **env},
            )
            os.unlink(handle.name)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["status"] == 202 and result["batch_status"] == 202, result
            getattr(importing, which).append(
                result["import_s"] * 1000 - statistics.median(boto.ours)
            )
            getattr(cold, which).append(
                (result["answered_at"] - started) / statistics.median(boto_process)
            )
            getattr(rss, which).append(result["max_rss_mib"])
    return boto, importing, cold, rss


def warm_cpu(env_lab: Lab, runs: int) -> Figure:
    figure = Figure(
        "warm adapter CPU per record (Piriod at 0 ms)", "ms", "≤ 1 ms", meets=lambda v: v <= 1
    )
    env_lab.piriod.clear_faults()
    with environment(env_lab.environment()):
        for which, handler in handlers().items():
            invoke(handler, delivery(1))  # warm: clients, secrets, connections
            for _ in range(runs if which == "ours" else max(2, runs // 3)):
                status, _, cpu = invoke(handler, delivery(RECORDS))
                assert status == 202
                getattr(figure, which).append(cpu / RECORDS * 1000)
    return figure


def round_trips(env_lab: Lab) -> tuple[Figure, Figure]:
    happy = Figure("AWS round trips per record, Piriod up", "", "≤ 1.2", meets=lambda v: v <= 1.2)
    outage = Figure(
        "AWS round trips per record, Piriod down", "", "≤ 1.5", meets=lambda v: v <= 1.5
    )
    env_lab.piriod.clear_faults()
    for figure, up in ((happy, True), (outage, False)):
        with environment(env_lab.environment(piriod_up=up, counted=True)):
            for which, handler in handlers().items():
                invoke(handler, delivery(1))
                env_lab.counter.reset()
                status, _, _ = invoke(handler, delivery(RECORDS))
                assert status == 202
                getattr(figure, which).append(env_lab.counter.total() / RECORDS)
    return happy, outage


def batch_times(env_lab: Lab, runs: int) -> tuple[Figure, Figure]:
    batch = Figure(
        f"{RECORDS} records, Piriod answering in 50 ms (floor {FLOOR:.2f} s)",
        "s",
        f"≤ {1.5 * FLOOR:.3f} s (1.5× floor); ≥ 5× faster than naive",
        meets=lambda v: v <= 1.5 * FLOOR,
    )
    outage = Figure(
        f"{RECORDS} records, Piriod refusing connections", "s", "≤ 0.5 s", meets=lambda v: v <= 0.5
    )
    for figure, up in ((batch, True), (outage, False)):
        env_lab.piriod.clear_faults()
        if up:
            env_lab.piriod.add_fault("latency", delay=LATENCY)
        for which in ("ours", "naive"):
            for _ in range(runs if which == "ours" else max(2, runs // 3)):
                # fresh queues and table for each run: moto's costs grow with what it holds
                with environment(env_lab.environment(piriod_up=up)):
                    handler = handlers()[which]
                    invoke(handler, delivery(1))  # a warm container
                    status, wall, _ = invoke(handler, delivery(RECORDS))
                    assert status == 202
                    getattr(figure, which).append(wall)
    env_lab.piriod.clear_faults()
    return batch, outage


def replay_throughput(env_lab: Lab, runs: int) -> tuple[Figure, Figure]:
    """Records per second drained from ReplayQueue, two ways: end to end through the local
    poller (whose ReceiveMessage and DeleteMessageBatch calls to moto are counted in), and per
    second of time inside the replay function, which is what one instance can do when
    Lambda's own pollers receive and delete, as they do, outside the function."""
    from piriod_devkit.aws import client
    from piriod_devkit.poller import drain

    drained = Figure(
        "replay throughput, Piriod answering in 50 ms",
        "records/s",
        "≥ 100 /s",
        meets=lambda v: v >= 100,
    )
    inside = Figure(
        "replay, records per second of replay-function time (same runs; no target)",
        "records/s",
        "—",
    )
    sys.path.insert(0, str(BENCH))
    import naive

    from piriod_adapter.handlers.replay import lambda_handler

    batch_size = replay_batch_size()
    for which, replay in (("ours", lambda_handler), ("naive", naive.replay_handler)):
        webhook = handlers()[which]
        for _ in range(runs if which == "ours" else 1):
            env_lab.piriod.clear_faults()
            env = env_lab.environment(piriod_up=False)
            with environment(env):  # fill ReplayQueue: every record queued while Piriod is down
                for _ in range(2):
                    assert invoke(webhook, delivery(RECORDS))[0] == 202
            env_lab.piriod.add_fault("latency", delay=LATENCY)
            in_function = [0.0]

            def timed(
                event: dict[str, Any],
                context: Any,
                replay: Any = replay,
                spent: list[float] = in_function,
            ) -> Any:
                began = time.perf_counter()
                try:
                    return replay(event, context)
                finally:
                    spent[0] += time.perf_counter() - began

            with environment({**env, "PIRIOD_API_URL": env_lab.piriod.url}):
                sqs = client("sqs", env_lab.moto.url)
                started = time.perf_counter()
                report = drain(sqs, env["REPLAY_QUEUE_URL"], timed, batch_size=batch_size)
                elapsed = time.perf_counter() - started
            assert report.deleted == 2 * RECORDS, report
            getattr(drained, which).append(report.deleted / elapsed)
            getattr(inside, which).append(report.deleted / in_function[0])
    env_lab.piriod.clear_faults()
    return drained, inside


def replay_batch_size() -> int:
    from piriod_devkit.template import load_template, parameter_default, resource

    trigger = resource(load_template(), "ReplayQueueTrigger")
    return int(parameter_default(load_template(), trigger["BatchSize"]))


def artifact_size() -> Figure:
    """The function's package as `sam build` makes it: src/ plus src/requirements.txt for
    Python 3.13 on x86_64 (boto3 comes with the Lambda runtime)."""
    figure = Figure(
        "`sam build` artifact (one function)", "MiB", "≤ 15 MB", meets=lambda v: v <= 15
    )
    with tempfile.TemporaryDirectory() as where:
        target = Path(where) / "package"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
                "--target",
                str(target),
                "--python-version",
                "3.13",
                "--platform",
                "manylinux2014_x86_64",
                "--only-binary=:all:",
                "-r",
                str(ROOT / "src" / "requirements.txt"),
            ],
            check=True,
        )
        shutil.copytree(ROOT / "src" / "piriod_adapter", target / "piriod_adapter")
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    figure.ours.append(size / 2**20)
    return figure


# --- the report ------------------------------------------------------------------------------


def _number(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; Python {meta['python']}; "
        f"{meta['runs']} runs per figure (naive: fewer where it is slow).",
        "",
        "| figure | target | median | spread (min–max) | naive median | ours vs naive | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, naive = row["median"], row["naive_median"]
        ratio = "—"
        if ours > 0 and naive > 0 and not row["figure"].startswith("`import boto3`"):
            better = ours / naive if row["unit"] == "records/s" else naive / ours
            ratio = f"{better:.1f}× better" if better >= 1 else f"{1 / better:.1f}× worse"
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        unit = f" {row['unit']}" if row["unit"] else ""
        lines.append(
            f"| {row['figure']} | {row['target']} | {_number(ours)}{unit} | "
            f"{_number(row['min'])}–{_number(row['max'])} | {_number(naive)}{unit} | {ratio} | {met} |"
        )
    return "\n".join(lines) + "\n"


GB_SECOND = 0.0000166667  # Lambda x86, us-east-1, USD
PER_INVOCATION = 0.20 / 1_000_000
FULL_CPU_MB = 1769  # Lambda gives one whole vCPU at this memory size, in proportion below it


def memory_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lambda's cost per million records, delivered as 100-record batches, at three memory
    sizes: a batch takes the longer of its measured wall time (Piriod at 50 ms) and its
    measured CPU time stretched by the share of a vCPU that size gets."""
    by_name = {row["figure"]: row for row in rows}
    cpu_ms = next(r["median"] for n, r in by_name.items() if n.startswith("warm adapter CPU"))
    wall_s = next(
        r["median"]
        for n, r in by_name.items()
        if n.startswith(f"{RECORDS} records, Piriod answering")
    )
    costs = []
    for memory in (512, 1024, FULL_CPU_MB):
        share = min(1.0, memory / FULL_CPU_MB)
        seconds = max(wall_s, cpu_ms * RECORDS / 1000 / share)
        batches = 1_000_000 / RECORDS
        usd = batches * (seconds * memory / 1024 * GB_SECOND + PER_INVOCATION)
        costs.append(
            {"memory_mb": memory, "batch_seconds": seconds, "usd_per_million_records": usd}
        )
    return costs


def cost_table(costs: list[dict[str, Any]]) -> str:
    lines = [
        "| Lambda memory | a 100-record batch takes | Lambda cost per million records |",
        "|---|---|---|",
    ]
    for c in costs:
        lines.append(
            f"| {c['memory_mb']} MB | {c['batch_seconds']:.2f} s "
            f"| ${c['usd_per_million_records']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 runs each, for a first look")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # no metric documents in the output
    figures: list[Figure] = []
    with lab() as env_lab:
        figures += cold_start(env_lab, runs)
        figures.append(warm_cpu(env_lab, runs))
        figures += round_trips(env_lab)
        figures += batch_times(env_lab, runs)
        figures += replay_throughput(env_lab, max(3, runs // 3))
    figures.append(artifact_size())
    rows = [f.row() for f in figures]
    costs = memory_costs(rows)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
        "python": sys.version.split()[0],
        "runs": runs,
    }
    (BENCH / "results.json").write_text(
        json.dumps({"meta": meta, "figures": rows, "memory": costs}, indent=2) + "\n"
    )
    table = markdown(rows, meta) + "\n" + cost_table(costs)
    (BENCH / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
