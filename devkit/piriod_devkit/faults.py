"""The fault suite: drive records through the webhook and replay while one fault at a time is
injected, then reconcile Piriod's ledger and both queues against what was acknowledged.

    .venv/bin/piriod-local faults            # prints the table; exits 1 if anything is lost
                                             # or posted twice

A "sender" behaves like a webhook producer: a delivery answered 202 is acknowledged; any
other answer (503, a 5xx) is sent again later, after the fault is gone. An acknowledged
record must end up in Piriod exactly once, or waiting in a queue.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from piriod_adapter.queue import receive_all
from piriod_devkit.aws import MotoServer, client, free_port, function_environment, provision
from piriod_devkit.events import LOCAL_SIGNING_SECRET, LambdaContext, http_event, sign_event
from piriod_devkit.piriod_standin import PiriodStandin
from piriod_devkit.poller import drain

TOKEN = "fault-suite-token"  # noqa: S105 (stand-in credential)
ROTATED = "fault-suite-token-rotated"
WORKSPACE = "acc_fault_suite"
COLUMNS = (
    "acknowledged",
    "posted",
    "queued",
    "rejected",
    "lost",
    "posted twice",
    "ambiguous",
    "unreconciled",
)


@dataclass
class Tally:
    fault: str
    acknowledged: int = 0
    posted: int = 0
    queued: int = 0
    rejected: int = 0
    lost: int = 0
    posted_twice: int = 0
    ambiguous: int = 0
    unreconciled: int = 0  # usages `piriod-adapter reconcile` reports missing on either side
    answers: Counter[int] = field(default_factory=Counter)

    def row(self) -> list[int]:
        return [
            self.acknowledged,
            self.posted,
            self.queued,
            self.rejected,
            self.lost,
            self.posted_twice,
            self.ambiguous,
            self.unreconciled,
        ]


class Lab:
    """One moto server and one Piriod stand-in; fresh AWS resources for every fault."""

    def __init__(self, records_per_fault: int = 80, batch: int = 10) -> None:
        self.records_per_fault = records_per_fault
        self.batch = batch
        self._line = 100_000

    def __enter__(self) -> Lab:
        self.moto = MotoServer().start()
        self.piriod = PiriodStandin(tokens=(TOKEN,), workspace=WORKSPACE).start()
        self.dead = f"http://127.0.0.1:{free_port()}"
        return self

    def __exit__(self, *_: object) -> None:
        self.piriod.stop()
        self.moto.stop()

    # --- plumbing ---------------------------------------------------------------------------
    def reset(self, **env: str) -> None:
        from piriod_adapter.runtime import reset_runtime

        self.piriod.reset()
        self.piriod.set_tokens(TOKEN)
        self.resources = provision(
            self.moto.url, token=TOKEN, signing_secrets=[LOCAL_SIGNING_SECRET]
        )
        for name in (
            "AWS_ENDPOINT_URL_SQS",
            "AWS_ENDPOINT_URL_DYNAMODB",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        ):
            os.environ.pop(name, None)
        os.environ.update(
            function_environment(
                self.resources,
                piriod_url=self.piriod.url,
                workspace=WORKSPACE,
                PIRIOD_CONNECT_TIMEOUT="1",
                PIRIOD_READ_TIMEOUT="1",
                SETTLE_AFTER_SECONDS="0",
                AWS_CLIENT_READ_TIMEOUT="15",
                REPLAY_BACKOFF_SECONDS="0",
                POWERTOOLS_LOG_LEVEL="CRITICAL",
                POWERTOOLS_METRICS_DISABLED="true",
            )
            | env
        )
        reset_runtime()

    def set_env(self, **env: str) -> None:
        from piriod_adapter.runtime import reset_runtime

        os.environ.update(env)
        reset_runtime()

    def unset_env(self, *names: str) -> None:
        from piriod_adapter.runtime import reset_runtime

        for name in names:
            os.environ.pop(name, None)
        reset_runtime()

    def deliveries(self, count: int | None = None) -> list[dict[str, Any]]:
        """Signed-later deliveries of unique records (one line each: easy to reconcile)."""
        total = count if count is not None else self.records_per_fault
        out = []
        for start in range(0, total, self.batch):
            usages = []
            for _ in range(min(self.batch, total - start)):
                self._line += 1
                usages.append(
                    {
                        "subscription_line": self._line,
                        "date_time": "2026-11-01T10:00:00Z",
                        "quantity": self._line % 7,
                    }
                )
            out.append({"id": f"msg_fault_{self._line}", "body": {"usages": usages}})
        return out

    def send(self, delivery: dict[str, Any], tally: Tally, timeout_seconds: float = 25.0) -> bool:
        from piriod_adapter.handlers.webhook import lambda_handler

        raw = json.dumps(delivery["body"]).encode()
        event = sign_event(http_event("POST", "/v1/usages", raw), message_id=delivery["id"])
        response = lambda_handler(event, LambdaContext(timeout_seconds=timeout_seconds))
        tally.answers[response["statusCode"]] += 1
        if response["statusCode"] != 202:
            return False
        delivery.setdefault("acked", True)
        return True

    def send_all(
        self, deliveries: list[dict[str, Any]], tally: Tally, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Send each once; return those not acknowledged (the sender will retry them)."""
        return [d for d in deliveries if not self.send(d, tally, **kwargs)]

    def retry_until_acked(
        self, pending: list[dict[str, Any]], tally: Tally, tries: int = 3
    ) -> None:
        for _ in range(tries):
            pending = self.send_all(pending, tally)
            if not pending:
                return

    def replay(self) -> None:
        from piriod_adapter.handlers.replay import lambda_handler

        drain(client("sqs", self.moto.url), self.resources.replay_queue_url, lambda_handler)

    def replay_dead_letters(self) -> None:
        import io

        from piriod_operator.cli import main

        main(["replay", "--limit", "10000"], out=io.StringIO(), err=io.StringIO())
        self.replay()  # ReplayFunction takes what the operator's replay handed to ReplayQueue

    def rotate_token(self) -> None:
        client("secretsmanager", self.moto.url).put_secret_value(
            SecretId=self.resources.token_secret_arn,
            SecretString=json.dumps({"api_token": ROTATED}),
        )

    def queue_bodies(self, url: str) -> list[dict[str, Any]]:
        sqs = client("sqs", self.moto.url)
        return [json.loads(m["Body"]) for m in receive_all(sqs, url, wait_seconds=0)]

    def count_ambiguous(self, tally: Tally) -> None:
        """Records whose post went unseen so far (flagged on their idempotency item)."""
        dynamodb = client("dynamodb", self.moto.url)
        pages = dynamodb.get_paginator("scan").paginate(
            TableName=self.resources.table, FilterExpression="attribute_exists(ambiguous_since)"
        )
        tally.ambiguous += sum(len(page["Items"]) for page in pages)

    def reconcile(self, deliveries: list[dict[str, Any]], tally: Tally) -> Tally:
        ledger = Counter(u["subscription_line"] for u in self.piriod.usages())
        waiting = Counter(
            m["usage"]["subscription_line"]
            for m in self.queue_bodies(self.resources.replay_queue_url)
        )
        dead = Counter(
            m["usage"]["subscription_line"]
            for m in self.queue_bodies(self.resources.dead_letter_queue_url)
        )
        for delivery in deliveries:
            for usage in delivery["body"]["usages"]:
                line = usage["subscription_line"]
                if ledger[line] > 1:
                    tally.posted_twice += 1
                if not delivery.get("acked"):
                    continue
                tally.acknowledged += 1
                if ledger[line] >= 1:
                    tally.posted += 1
                elif waiting[line]:
                    tally.queued += 1
                elif dead[line]:
                    tally.rejected += 1
                else:
                    tally.lost += 1
        self._reconcile_lines(deliveries, tally)
        return tally

    def _reconcile_lines(self, deliveries: list[dict[str, Any]], tally: Tally) -> None:
        """What the operator's reconcile says, for every line of the run."""
        from datetime import datetime

        from piriod_adapter.runtime import get_runtime
        from piriod_operator.operator import reconcile

        runtime = get_runtime()
        day = (
            datetime.fromisoformat("2026-11-01T00:00:00+00:00"),
            datetime.fromisoformat("2026-11-01T23:59:59+00:00"),
        )
        for delivery in deliveries:
            for usage in delivery["body"]["usages"]:
                report = reconcile(runtime, usage["subscription_line"], *day)
                tally.unreconciled += (
                    len(report["missing_in_piriod"])
                    + len(report["not_recorded_by_adapter"])
                    + len(report["quantity_differs"])
                )


Scenario = Callable[[Lab, Tally], list[dict[str, Any]]]


def _piriod_fault(kind: str, **kwargs: Any) -> Scenario:
    def run(lab: Lab, tally: Tally) -> list[dict[str, Any]]:
        deliveries = lab.deliveries()
        lab.piriod.add_fault(kind, count=lab.records_per_fault // 2, **kwargs)
        lab.send_all(deliveries, tally)
        lab.count_ambiguous(tally)
        lab.piriod.clear_faults()
        lab.replay()
        return deliveries

    return run


def _refused(lab: Lab, tally: Tally) -> list[dict[str, Any]]:
    deliveries = lab.deliveries()
    lab.set_env(PIRIOD_API_URL=lab.dead)
    lab.send_all(deliveries, tally)
    lab.set_env(PIRIOD_API_URL=lab.piriod.url)
    lab.replay()
    return deliveries


def _unauthorized_until_rotated(lab: Lab, tally: Tally) -> list[dict[str, Any]]:
    deliveries = lab.deliveries()
    lab.piriod.set_tokens(ROTATED)  # Piriod moved on; our secret still holds the old token
    lab.send_all(deliveries, tally)
    lab.count_ambiguous(tally)
    lab.replay()  # fails every attempt: records end in the dead-letter queue, exhausted
    lab.rotate_token()
    lab.set_env()
    lab.replay_dead_letters()
    return deliveries


def _rejected_lines(lab: Lab, tally: Tally) -> list[dict[str, Any]]:
    deliveries = lab.deliveries()
    chosen = [u["subscription_line"] for d in deliveries for u in d["body"]["usages"]][::4]
    lab.piriod.set_unmetered_lines(*chosen)
    lab.send_all(deliveries, tally)
    lab.count_ambiguous(tally)
    lab.replay()  # ReplayFunction: posts whose answer was lost on the way (slow machine)
    lab.piriod.set_unmetered_lines(*chosen[: len(chosen) // 2])  # half get fixed
    lab.replay_dead_letters()
    return deliveries


def _aws_down(variable: str, with_piriod_failing: bool) -> Scenario:
    def run(lab: Lab, tally: Tally) -> list[dict[str, Any]]:
        deliveries = lab.deliveries()
        if with_piriod_failing:
            lab.piriod.add_fault("status", status=500, count=lab.records_per_fault // 2)
        lab.set_env(**{variable: lab.dead})
        pending = lab.send_all(deliveries, tally)
        lab.unset_env(variable)
        lab.piriod.clear_faults()
        lab.retry_until_acked(pending, tally)
        lab.replay()
        return deliveries

    return run


def _concurrent_duplicates(lab: Lab, tally: Tally) -> list[dict[str, Any]]:
    deliveries = lab.deliveries()
    lab.piriod.add_fault("latency", delay=0.2)
    with ThreadPoolExecutor(max_workers=10) as pool:
        for delivery in deliveries:
            acked = list(pool.map(lambda d: lab.send(d, tally), [delivery] * 10))
            if not any(acked):
                lab.retry_until_acked([delivery], tally)
    lab.piriod.clear_faults()
    lab.replay()
    return deliveries


def _deadline(lab: Lab, tally: Tally) -> list[dict[str, Any]]:
    records = [u for d in lab.deliveries() for u in d["body"]["usages"]]
    deliveries = [
        {"id": f"msg_fault_deadline_{records[0]['subscription_line']}", "body": {"usages": records}}
    ]
    lab.piriod.add_fault("latency", delay=0.3)
    # 9.5 s of function time: 5 s reserve and a 4 s post budget leave ~0.5 s to start posts,
    # so the first rounds are posted and the rest of the batch is queued
    if not lab.send(deliveries[0], tally, timeout_seconds=9.5):
        lab.retry_until_acked(deliveries, tally)
    lab.piriod.clear_faults()
    lab.replay()
    return deliveries


SCENARIOS: list[tuple[str, Scenario]] = [
    ("Piriod 500", _piriod_fault("status", status=500)),
    ("Piriod 502", _piriod_fault("status", status=502)),
    ("Piriod 503", _piriod_fault("status", status=503)),
    ("Piriod 429 + Retry-After", _piriod_fault("status", status=429, retry_after=1)),
    ("read timeout after arrival", _piriod_fault("timeout_after_store", delay=1.5)),
    ("connection reset", _piriod_fault("reset")),
    ("connection refused", _refused),
    ("401 until token rotated", _unauthorized_until_rotated),
    ("400 for chosen lines", _rejected_lines),
    ("SQS unreachable", _aws_down("AWS_ENDPOINT_URL_SQS", with_piriod_failing=True)),
    ("DynamoDB unreachable", _aws_down("AWS_ENDPOINT_URL_DYNAMODB", with_piriod_failing=False)),
    (
        "Secrets Manager unreachable",
        _aws_down("AWS_ENDPOINT_URL_SECRETS_MANAGER", with_piriod_failing=False),
    ),
    ("same delivery x10 concurrently", _concurrent_duplicates),
    ("deadline mid-batch", _deadline),
]


@contextmanager
def restored_environment() -> Iterator[None]:
    """Put os.environ back as it was: the lab changes it like a Lambda container's."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_suite(records_per_fault: int = 80, only: list[str] | None = None) -> list[Tally]:
    tallies = []
    with restored_environment(), Lab(records_per_fault) as lab:
        for name, scenario in SCENARIOS:
            if only and name not in only:
                continue
            lab.reset()
            tally = Tally(name)
            deliveries = scenario(lab, tally)
            lab.reconcile(deliveries, tally)
            tallies.append(tally)
    return tallies


def render(tallies: list[Tally]) -> str:
    width = max(len(t.fault) for t in tallies) + 2
    lines = ["fault".ljust(width) + "".join(c.rjust(14) for c in COLUMNS)]
    for t in tallies:
        lines.append(t.fault.ljust(width) + "".join(str(v).rjust(14) for v in t.row()))
    totals = [sum(t.row()[i] for t in tallies) for i in range(len(COLUMNS))]
    lines.append("total".ljust(width) + "".join(str(v).rjust(14) for v in totals))
    return "\n".join(lines)


def main(records_per_fault: int = 80) -> int:
    started = time.monotonic()
    tallies = run_suite(records_per_fault)
    print(render(tallies))
    print(
        f"{sum(t.acknowledged for t in tallies)} acknowledged records, "
        f"{time.monotonic() - started:.0f} s"
    )
    bad = sum(t.lost + t.posted_twice + t.unreconciled for t in tallies)
    return 1 if bad else 0
