"""SQS: ReplayQueue for records that may pass later, DeadLetterQueue for a person to see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from piriod_adapter.models import FailureKind, QueuedRecord

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

REPLAY = "replay"
DEAD_LETTER = "dead-letter"
MAX_DELAY_SECONDS = 900  # SQS's DelaySeconds ceiling


class QueueUnavailable(RuntimeError):
    """The message could not be stored."""


@dataclass(frozen=True)
class Placement:
    """Where a failed record now waits."""

    queue: str  # REPLAY or DEAD_LETTER
    message_id: str
    message: QueuedRecord
    resent: bool = False  # a fresh copy replaces the message being replayed


class FailureQueue:
    def __init__(self, client: SQSClient, replay_url: str, dead_letter_url: str) -> None:
        self._client = client
        self.replay_url = replay_url
        self.dead_letter_url = dead_letter_url

    def url(self, queue: str) -> str:
        return self.replay_url if queue == REPLAY else self.dead_letter_url

    def store(self, message: QueuedRecord) -> Placement:
        """Where a failed record waits (SPEC 5): refused for the record itself ->
        DeadLetterQueue, for a person; any passing failure -> ReplayQueue, for ReplayFunction."""
        if message.failure.kind is FailureKind.REJECTED:
            return self.send(DEAD_LETTER, message)
        return self.send(REPLAY, message)

    def send(self, queue: str, message: QueuedRecord, delay_seconds: int = 0) -> Placement:
        attributes: dict[str, MessageAttributeValueTypeDef] = {
            "kind": {"DataType": "String", "StringValue": message.failure.kind.value},
            "scope": {"DataType": "String", "StringValue": message.usage.key.scope},
        }
        if message.usage.subscription_line is not None:
            attributes["subscription_line"] = {
                "DataType": "Number",
                "StringValue": str(message.usage.subscription_line),
            }
        try:
            response = self._client.send_message(
                QueueUrl=self.url(queue),
                MessageBody=message.to_json(),
                MessageAttributes=attributes,
                DelaySeconds=max(0, min(MAX_DELAY_SECONDS, delay_seconds)),
            )
        except Exception as exc:  # endpoint down, throttled, access denied: not stored
            raise QueueUnavailable(f"cannot send to queue: {type(exc).__name__}") from None
        return Placement(queue, response["MessageId"], message)

    def send_raw(self, queue: str, body: str, kind: str) -> str:
        """Forward a message body as it is (one that cannot be read as a record)."""
        try:
            response = self._client.send_message(
                QueueUrl=self.url(queue),
                MessageBody=body,
                MessageAttributes={"kind": {"DataType": "String", "StringValue": kind}},
            )
        except Exception as exc:
            raise QueueUnavailable(f"cannot send to queue: {type(exc).__name__}") from None
        return response["MessageId"]

    def counts(self, queue: str) -> dict[str, int]:
        """SQS's own counts, read without receiving anything: visible, in flight (being
        replayed or waiting out a back-off) and delayed."""
        attributes = self._client.get_queue_attributes(
            QueueUrl=self.url(queue),
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return {
            "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        }


WALK_HOLD_SECONDS = 30


def receive_all(
    client: SQSClient,
    url: str,
    *,
    limit: int = 10_000,
    hold_seconds: int = 0,
    wait_seconds: int = 1,
) -> list[dict[str, Any]]:
    """Every visible message in a queue (up to `limit`), each once. SQS has no peek: messages
    are held invisible while the queue is walked, or it would hand back the same first ten
    again and again. With hold_seconds=0 they are released at the end (a look, not a take);
    otherwise they stay held that long, for the caller to act on. Every read counts as a
    receive towards a queue's maxReceiveCount: never walk ReplayQueue with this (the table
    lists what waits there); DeadLetterQueue has no redrive, so its counts mean nothing."""
    seen: dict[str, dict[str, Any]] = {}
    empty_rounds = 0
    while len(seen) < limit and empty_rounds < 2:
        batch = client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(10, limit - len(seen)),
            VisibilityTimeout=hold_seconds or WALK_HOLD_SECONDS,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=wait_seconds,
        ).get("Messages", [])
        new = [m for m in batch if m["MessageId"] not in seen]
        if not new:
            empty_rounds += 1
        for message in new:
            seen[message["MessageId"]] = dict(message)
    messages = list(seen.values())
    if hold_seconds == 0:
        release(client, url, [m["ReceiptHandle"] for m in messages])
    return messages


def release(client: SQSClient, url: str, receipt_handles: list[str]) -> None:
    """Make received messages visible again at once."""
    for start in range(0, len(receipt_handles), 10):
        client.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for i, handle in enumerate(receipt_handles[start : start + 10])
            ],
        )
