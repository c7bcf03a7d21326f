"""One cold start, in a new process: import a webhook handler, answer a one-record delivery,
then a 100-record one (for the peak RSS). Prints one JSON line for bench/run.py.

    python bench/cold.py adapter|naive EVENTS.json [first]

With `first`, it answers the first delivery only and exits: the whole process is then a
cold start. It prints when the handler was imported and when the first delivery was answered
(time.time(), for the parent to subtract its own start time from).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


class Context:
    """The few parts of the Lambda context the handlers read."""

    function_name = "WebhookFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    aws_request_id = "bench"

    def __init__(self, seconds: float = 25.0) -> None:
        self._until = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self._until - time.monotonic()) * 1000)


def peak_rss_mib() -> float:
    """This process's own peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux keeps
    that across fork and exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def main() -> None:
    which, events_file = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    if which == "adapter":
        from piriod_adapter.handlers.webhook import lambda_handler as handler
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from naive import webhook_handler as handler
    imported, imported_at = time.perf_counter(), time.time()
    events = json.loads(Path(events_file).read_text())
    first = handler(events[0], Context())
    answered_at = time.time()
    result = {
        "import_s": imported - started,
        "imported_at": imported_at,
        "answered_at": answered_at,
        "status": first["statusCode"],
    }
    if sys.argv[3:] != ["first"]:
        batch = handler(events[1], Context())
        result.update(batch_status=batch["statusCode"], max_rss_mib=peak_rss_mib())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
