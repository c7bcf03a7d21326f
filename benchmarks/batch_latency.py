"""Benchmark: how long the webhook takes to answer a 100-record batch against a Piriod that
answers each POST in 50 ms (moto server and the Piriod stand-in over loopback).

    make bench            # or: .venv/bin/python benchmarks/batch_latency.py --runs 10

Prints one line per run and a summary (p50 / p90 / max seconds, Piriod requests, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.050, help="Piriod latency per POST (s)")
    parser.add_argument("--concurrency", type=int, default=16, help="POST_CONCURRENCY")
    args = parser.parse_args()

    from piriod_devkit.aws import MotoServer, function_environment, provision
    from piriod_devkit.events import LOCAL_SIGNING_SECRET, LambdaContext, http_event, sign_event
    from piriod_devkit.standin_process import StandinProcess

    # Piriod is remote in production: the stand-in runs in its own process, as moto does.
    with MotoServer() as moto, StandinProcess(token="bench", workspace="acc_bench") as piriod:
        resources = provision(moto.url, token="bench", signing_secrets=[LOCAL_SIGNING_SECRET])
        os.environ.update(
            function_environment(
                resources,
                piriod_url=piriod.url,
                workspace="acc_bench",
                POST_CONCURRENCY=str(args.concurrency),
                POWERTOOLS_LOG_LEVEL="WARNING",
            )
        )
        from piriod_adapter.handlers.webhook import lambda_handler
        from piriod_adapter.runtime import reset_runtime

        reset_runtime()
        piriod.add_fault("latency", delay=args.latency)
        # warm the container once (clients, token, signing secret), as a warm Lambda would be
        warm = sign_event(
            http_event(
                "POST",
                "/v1/usages",
                json.dumps(
                    {"subscription_line": 1, "date_time": "2026-11-01T00:00:00Z", "quantity": 1}
                ).encode(),
            )
        )
        lambda_handler(warm, LambdaContext())

        timings = []
        print(
            f"{args.records}-record batch, Piriod latency {args.latency * 1000:.0f} ms, "
            f"POST_CONCURRENCY={args.concurrency}"
        )
        for run in range(args.runs):
            body = {
                "usages": [
                    {
                        "subscription_line": 10_000 + run * 1000 + i,
                        "date_time": "2026-11-01T10:00:00Z",
                        "quantity": i,
                    }
                    for i in range(args.records)
                ]
            }
            event = sign_event(http_event("POST", "/v1/usages", json.dumps(body).encode()))
            start = time.perf_counter()
            response = lambda_handler(event, LambdaContext())
            elapsed = time.perf_counter() - start
            statuses = {r["status"] for r in json.loads(response["body"])["results"]}
            assert response["statusCode"] == 202 and statuses == {"posted"}, (response, statuses)
            timings.append(elapsed)
            print(f"  run {run + 1:2d}: {elapsed:.3f} s")
        timings.sort()
        p90 = timings[max(0, int(len(timings) * 0.9) - 1)]
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"p50 {statistics.median(timings):.3f} s · p90 {p90:.3f} s · max {timings[-1]:.3f} s · "
            f"Piriod POSTs {len(piriod.usages())} · peak RSS {rss_mib:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
