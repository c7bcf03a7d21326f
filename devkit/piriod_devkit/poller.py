"""What Lambda's SQS event source mapping does, locally: receive a batch from a queue, invoke
the function with an SQS event, delete the messages it did not report as failed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from piriod_devkit.aws import REGION
from piriod_devkit.events import LambdaContext

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda builds from received SQS messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": m["Attributes"].get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": m["Attributes"].get("SentTimestamp", "0"),
                    "SenderId": "local",
                    "ApproximateFirstReceiveTimestamp": m["Attributes"].get(
                        "ApproximateFirstReceiveTimestamp", "0"
                    ),
                },
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "dataType": value["DataType"],
                        "stringListValues": [],
                        "binaryListValues": [],
                    }
                    for name, value in (m.get("MessageAttributes") or {}).items()
                },
                "md5OfBody": hashlib.md5(m["Body"].encode()).hexdigest(),  # noqa: S324 (SQS's own)
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


_ARNS: dict[str, str] = {}


def _arn(sqs: Any, queue_url: str) -> str:
    if queue_url not in _ARNS:
        _ARNS[queue_url] = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
    return _ARNS[queue_url]


@dataclass
class DrainReport:
    received: int = 0
    deleted: int = 0
    failed: int = 0
    responses: list[dict[str, Any]] = field(default_factory=list)


def poll_once(
    sqs: Any,
    queue_url: str,
    handler: Handler,
    *,
    batch_size: int = 10,
    timeout_seconds: float = 60.0,
    report: DrainReport | None = None,
) -> DrainReport:
    """One receive-invoke-delete round, as the event source mapping does it."""
    report = report or DrainReport()
    received: list[dict[str, Any]] = []
    while len(received) < batch_size:  # the mapping gathers a batch ten messages at a time
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, batch_size - len(received)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        received += got
        if len(got) < 10:
            break
    if not received:
        return report
    arn = _arn(sqs, queue_url)
    response = handler(sqs_event(received, arn), LambdaContext(timeout_seconds, "ReplayFunction"))
    failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
    done = [m for m in received if m["MessageId"] not in failed]
    for start in range(0, len(done), 10):  # as the mapping does: DeleteMessageBatch
        chunk = done[start : start + 10]
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)
            ],
        )
    report.deleted += len(done)
    report.received += len(received)
    report.failed += len(failed)
    report.responses.append(response)
    return report


def drain(
    sqs: Any, queue_url: str, handler: Handler, *, max_batches: int = 1000, **kwargs: Any
) -> DrainReport:
    """Poll until a receive comes back empty (messages left invisible by a back-off stay)."""
    report = DrainReport()
    for _ in range(max_batches):
        before = report.received
        poll_once(sqs, queue_url, handler, report=report, **kwargs)
        if report.received == before:
            break
    return report
