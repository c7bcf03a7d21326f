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
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
    goal: float | None = None  # the target, as a number: at most this (at least, if `higher`)
    higher: bool = False
    # a ratio of medians (the samples are then each run's ratio, for the spread only)
    headline_ours: float | None = None
    headline_naive: float | None = None

    @staticmethod
    def middle(samples: list[float]) -> float:
        return statistics.median(samples) if samples else float("nan")

    def row(self) -> dict[str, Any]:
        ours, naive = self.middle(self.ours), self.middle(self.naive)
        if self.headline_ours is not None:
            ours = self.headline_ours
        if self.headline_naive is not None:
            naive = self.headline_naive
        return {
            "figure": self.name,
            "unit": self.unit,
            "target": self.target,
            "median": ours,
            "min": min(self.ours, default=float("nan")),
            "max": max(self.ours, default=float("nan")),
            "runs": len(self.ours),
            "naive_median": naive,
            "goal": self.goal,
            "to_goal": ours / self.goal if self.goal else None,
            "met": None
            if self.goal is None
            else bool(ours >= self.goal if self.higher else ours <= self.goal),
        }


# --- the stand-ins -----------------------------------------------------------------------------


class Counter:
    """bench/aws_counter.py in its own process, in front of moto: requests counted, DynamoDB
    write units priced."""

    def __init__(self, target: str, *, serial: bool = False) -> None:
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
                *(["--serial"] if serial else []),
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

    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = json.loads(self.http.request("GET", self.url + "/__counts").data)
        return counts

    def total(self) -> int:
        return int(self.counts()["total"])

    def wcu(self) -> int:
        return int(self.counts()["wcu"])

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


class OtlpReceiver:
    """An OTLP/HTTP traces receiver on loopback, for the cold starts with tracing on: every
    POST is answered 200 and counted."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def lambda_package(where: Path) -> str:
    """The function's package as `sam build` makes it (src/Makefile, the same target): the
    dependencies from wheels for Python 3.13 on x86_64, src/piriod_adapter, and the bytecode of
    every module. First on PYTHONPATH, it is imported instead of the checkout and the venv's
    packages; boto3, which the Lambda runtime brings, comes from the venv."""
    subprocess.run(
        [
            "make",
            "--silent",
            "-C",
            str(ROOT / "src"),
            "build-WebhookFunction",
            f"ARTIFACTS_DIR={where}",
            f"PYTHON={sys.executable}",
        ],
        check=True,
    )
    return str(where)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, dict[str, Any]]:
    """One process: (time.time() at its start, its wall seconds to exit, its CPU seconds, its
    last line as JSON, if any)."""
    cpu = _children_cpu()
    started, began = time.time(), time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - began
    lines = out.stdout.strip().splitlines()
    return started, wall, _children_cpu() - cpu, json.loads(lines[-1]) if lines else {}


def _events_file(records: list[int]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump([delivery(n) for n in records], handle)
    return handle.name


def cold_start(env_lab: Lab, runs: int) -> list[Figure]:
    """Cold starts as the outside check measures them: a new process is started and the
    first signed delivery (one record) is answered 202, against `python -c 'import boto3'`,
    the processes in turns (boto3, the adapter with tracing off, with tracing on, the naive
    one), the median of `runs` each. The ratio is the median over the median."""
    boto = Figure("`python -c 'import boto3'`, a whole process (reference)", "ms", "—")
    cold = Figure(
        "cold process to first 202 ÷ `import boto3` (tracing off)",
        "×",
        "≤ 1.5×",
        goal=1.5,
    )
    traced = Figure(
        "cold process to first 202, tracing on ÷ tracing off",
        "×",
        "≤ 1.2× (+20 %)",
        goal=1.2,
    )
    traced_cpu = Figure("cold process CPU, tracing on ÷ tracing off", "×", "—")
    to_exit = Figure("cold process to its exit ÷ `import boto3` (tracing off)", "×", "—")
    cpu = Figure("cold process CPU ÷ `import boto3` CPU (tracing off)", "×", "—")
    importing = Figure("process start to handler imported (tracing off)", "ms", "—")
    rss = Figure("peak RSS of the function process", "MiB", "≤ 100 MB", goal=100)
    receiver = OtlpReceiver()
    env = env_lab.environment()
    samples: dict[str, list[float]] = {k: [] for k in ("boto", "boto_cpu", "on", "on_cpu")}
    answered: dict[str, list[float]] = {"ours": [], "naive": []}
    exits: dict[str, list[float]] = {"ours": [], "naive": []}
    cpus: dict[str, list[float]] = {"ours": [], "naive": []}
    with tempfile.TemporaryDirectory() as where:
        base = {
            **os.environ,
            **env,
            "PYTHONPATH": lambda_package(Path(where)),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        tracing = {
            **base,
            "PIRIOD_TRACING": "true",
            "PIRIOD_TRACING_ENDPOINT": receiver.url,
        }
        for _ in range(runs):
            _, wall, spent, _ = _process([sys.executable, "-c", "import boto3"], base)
            samples["boto"].append(wall)
            samples["boto_cpu"].append(spent)
            for which, child_env in (("ours", base), ("on", tracing), ("naive", base)):
                events = _events_file([1])
                kind = "naive" if which == "naive" else "adapter"
                started, wall, spent, result = _process(
                    [sys.executable, str(BENCH / "cold.py"), kind, events, "first"], child_env
                )
                os.unlink(events)
                assert result["status"] == 202, result
                if which == "on":
                    samples["on"].append(result["answered_at"] - started)
                    samples["on_cpu"].append(spent)
                    continue
                answered[which].append(result["answered_at"] - started)
                exits[which].append(wall)
                cpus[which].append(spent)
                if which == "ours":
                    importing.ours.append((result["imported_at"] - started) * 1000)
                else:
                    importing.naive.append((result["imported_at"] - started) * 1000)
        exported = receiver.requests
        receiver.stop()
        assert exported >= runs, f"tracing on: {exported} exports for {runs} cold starts"
        for which in ("ours", "naive"):  # peak RSS after a 1-record and a 100-record delivery
            for _ in range(max(2, runs // 3)):
                events = _events_file([1, RECORDS])
                _, _, _, result = _process(
                    [
                        sys.executable,
                        str(BENCH / "cold.py"),
                        "adapter" if which == "ours" else "naive",
                        events,
                    ],
                    base,
                )
                os.unlink(events)
                assert result["status"] == 202 and result["batch_status"] == 202, result
                getattr(rss, which).append(result["max_rss_mib"])
    median = statistics.median
    boto.ours = boto.naive = [v * 1000 for v in samples["boto"]]
    for which in ("ours", "naive"):
        getattr(cold, which).extend(v / median(samples["boto"]) for v in answered[which])
        getattr(to_exit, which).extend(v / median(samples["boto"]) for v in exits[which])
        getattr(cpu, which).extend(v / median(samples["boto_cpu"]) for v in cpus[which])
        setattr(cold, f"headline_{which}", median(answered[which]) / median(samples["boto"]))
        setattr(to_exit, f"headline_{which}", median(exits[which]) / median(samples["boto"]))
        setattr(cpu, f"headline_{which}", median(cpus[which]) / median(samples["boto_cpu"]))
    traced.ours = [v / median(answered["ours"]) for v in samples["on"]]
    traced.headline_ours = median(samples["on"]) / median(answered["ours"])
    traced_cpu.ours = [v / median(cpus["ours"]) for v in samples["on_cpu"]]
    traced_cpu.headline_ours = median(samples["on_cpu"]) / median(cpus["ours"])
    return [boto, cold, traced, traced_cpu, to_exit, cpu, importing, rss]


def warm_cpu(env_lab: Lab, runs: int) -> Figure:
    figure = Figure("warm adapter CPU per record (Piriod at 0 ms)", "ms", "≤ 1 ms", goal=1)
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
    happy = Figure("AWS round trips per record, Piriod up", "", "≤ 1.2", goal=1.2)
    outage = Figure("AWS round trips per record, Piriod down", "", "≤ 1.5", goal=1.5)
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


PER_DELIVERY = 40  # records per delivery, as the outside load check sends them
HEALTHY_LATENCY = 0.030  # Piriod's answer time, as in make bench-load
GOALS = {"round_trips": 1.2, "p99_s": 3.0}  # issue 25: per record with Piriod healthy; per delivery


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")


def per_delivery(env_lab: Lab, count: int) -> dict[str, Any]:
    """AWS round trips per record, DynamoDB write units per record and the time of each
    delivery, from the same deliveries: `count` deliveries of PER_DELIVERY records, one after
    another into a warm container, Piriod healthy (answering in 30 ms), every AWS request
    counted and priced by the proxy in front of moto. The naive baseline does the same."""
    env_lab.piriod.clear_faults()
    env_lab.piriod.add_fault("latency", delay=HEALTHY_LATENCY)
    measured: dict[str, Any] = {}
    try:
        for which, handler in handlers().items():
            n = count if which == "ours" else max(3, count // 6)
            with environment(env_lab.environment(counted=True)):
                assert invoke(handler, delivery(1))[0] == 202  # a warm container
                env_lab.counter.reset()
                seconds = []
                for _ in range(n):
                    status, wall, _ = invoke(handler, delivery(PER_DELIVERY))
                    assert status == 202
                    seconds.append(wall)
                counts = env_lab.counter.counts()
            records = n * PER_DELIVERY
            measured[which] = {
                "deliveries": n,
                "records": records,
                "round_trips_per_record": counts["total"] / records,
                "wcu_per_record": counts["wcu"] / records,
                "requests": counts["by_action"],
                "p50_s": percentile(seconds, 50),
                "p99_s": percentile(seconds, 99),
            }
    finally:
        env_lab.piriod.clear_faults()
    ours, naive = measured["ours"], measured["naive"]
    measured["ratios"] = {
        "round_trips_to_goal": ours["round_trips_per_record"] / GOALS["round_trips"],
        "wcu_to_naive": ours["wcu_per_record"] / naive["wcu_per_record"],
        "p99_to_goal": ours["p99_s"] / GOALS["p99_s"],
    }
    return measured


def per_delivery_table(measured: dict[str, Any]) -> str:
    ours, naive, ratios = measured["ours"], measured["naive"], measured["ratios"]
    return (
        "\n".join(
            [
                f"Per delivery, side by side: {ours['deliveries']} deliveries of {PER_DELIVERY} "
                f"records, one at a time into a warm container, Piriod healthy (answering in "
                f"{HEALTHY_LATENCY * 1000:.0f} ms); AWS requests counted and DynamoDB writes priced "
                "by the proxy in front of moto (bench/aws_counter.py).",
                "",
                "| | AWS round trips per record | DynamoDB write units per record | p99 per delivery |",
                "|---|---|---|---|",
                f"| goal | ≤ {GOALS['round_trips']} | the naive baseline's or less | ≤ {GOALS['p99_s']:.0f} s |",
                f"| adapter | {ours['round_trips_per_record']:.2f} "
                f"({ratios['round_trips_to_goal']:.2f}× the goal) "
                f"| {ours['wcu_per_record']:.2f} ({ratios['wcu_to_naive']:.2f}× naive) "
                f"| {ours['p99_s']:.3f} s ({ratios['p99_to_goal']:.2f}× the goal; p50 {ours['p50_s']:.3f} s) |",
                f"| naive baseline ({naive['deliveries']} deliveries) "
                f"| {naive['round_trips_per_record']:.2f} | {naive['wcu_per_record']:.2f} "
                f"| {naive['p99_s']:.3f} s (p50 {naive['p50_s']:.3f} s) |",
            ]
        )
        + "\n"
    )


def batch_times(env_lab: Lab, runs: int) -> tuple[Figure, Figure]:
    batch = Figure(
        f"{RECORDS} records, Piriod answering in 50 ms (floor {FLOOR:.2f} s)",
        "s",
        f"≤ {1.5 * FLOOR:.3f} s (1.5× floor); ≥ 5× faster than naive",
        goal=1.5 * FLOOR,
    )
    outage = Figure(f"{RECORDS} records, Piriod refusing connections", "s", "≤ 0.5 s", goal=0.5)
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
        goal=100,
        higher=True,
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
    """The function's package as `sam build` makes it (lambda_package), bytecode included:
    more than 15 MB, for a cold start about half as long (README, "Benchmarks")."""
    figure = Figure("`sam build` artifact (one function, with bytecode)", "MiB", "≤ 15 MB", goal=15)
    with tempfile.TemporaryDirectory() as where:
        target = Path(lambda_package(Path(where) / "package"))
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
        f"Measured {meta['date']} on {meta['machine']}; Python {meta['python']}; commit "
        f"{meta.get('commit', '?')}; {meta['runs']} runs per figure (naive: fewer where it is "
        f"slow), cold starts {meta.get('cold_runs', meta['runs'])} of each kind in turns.",
        "",
        "| figure | target | median | ÷ target | spread (min–max) | naive median | ours vs naive | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, naive = row["median"], row["naive_median"]
        ratio = "—"
        if ours > 0 and naive > 0 and "(reference)" not in row["figure"]:
            better = ours / naive if row["unit"] == "records/s" else naive / ours
            ratio = f"{better:.1f}× better" if better >= 1 else f"{1 / better:.1f}× worse"
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        unit = f" {row['unit']}" if row["unit"] else ""
        to_goal = "—" if row.get("to_goal") is None else f"{row['to_goal']:.2f}"
        lines.append(
            f"| {row['figure']} | {row['target']} | {_number(ours)}{unit} | {to_goal} | "
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


def code_version() -> str:
    """The commit measured, and whether src/ had uncommitted changes."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], check=False, capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (
        " with uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 runs each, for a first look")
    parser.add_argument(
        "--cold-runs", type=int, default=7, help="cold starts of each kind, in turns (7)"
    )
    parser.add_argument(
        "--deliveries", type=int, default=30, help=f"{PER_DELIVERY}-record deliveries (30)"
    )
    parser.add_argument(
        "--only",
        choices=("cold",),
        help="cold: the cold starts only, printed (no results file is written)",
    )
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    cold_runs = 3 if args.quick else args.cold_runs
    count = 6 if args.quick else args.deliveries
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # no metric documents in the output
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"  # nor a log line per record
    figures: list[Figure] = []
    if args.only == "cold":
        with lab() as env_lab:
            rows = [f.row() for f in cold_start(env_lab, cold_runs)]
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores",
            "python": sys.version.split()[0],
            "runs": cold_runs,
            "cold_runs": cold_runs,
            "commit": code_version(),
        }
        print(markdown(rows, meta))
        return 0
    with lab() as env_lab:
        figures += cold_start(env_lab, cold_runs)
        measured = per_delivery(env_lab, count)
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
        "cold_runs": cold_runs,
        "commit": code_version(),
    }
    (BENCH / "results.json").write_text(
        json.dumps(
            {"meta": meta, "figures": rows, "per_delivery": measured, "memory": costs}, indent=2
        )
        + "\n"
    )
    table = markdown(rows, meta) + "\n" + per_delivery_table(measured) + "\n" + cost_table(costs)
    (BENCH / "results.md").write_text(table)
    print(table)
    sys.path.insert(0, str(BENCH))
    import pages

    for page in pages.update():
        print(f"updated {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
