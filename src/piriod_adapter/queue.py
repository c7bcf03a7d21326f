"""SQS: ReplayQueue for records that may pass later, DeadLetterQueue for a person to see."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from piriod_adapter.models import FailureKind, QueuedRecord

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef


class QueueUnavailable(RuntimeError):
    """The message could not be stored."""


class FailureQueue:
    def __init__(self, client: SQSClient, replay_url: str, dead_letter_url: str) -> None:
        self._client = client
        self.replay_url = replay_url
        self.dead_letter_url = dead_letter_url

    def store(self, message: QueuedRecord) -> QueuedRecord:
        """Where a failed record waits (SPEC 5): rejected by Piriod -> DeadLetterQueue, for a
        person; any passing failure -> ReplayQueue, for ReplayFunction."""
        if message.failure.kind is FailureKind.REJECTED:
            self.to_dead_letter(message)
        else:
            self.to_replay(message)
        return message

    def to_replay(self, message: QueuedRecord) -> str:
        return self._send(self.replay_url, message)

    def to_dead_letter(self, message: QueuedRecord) -> str:
        return self._send(self.dead_letter_url, message)

    def _send(self, url: str, message: QueuedRecord) -> str:
        attributes: dict[str, MessageAttributeValueTypeDef] = {
            "kind": {"DataType": "String", "StringValue": message.failure.kind.value},
            "subscription_line": {
                "DataType": "Number",
                "StringValue": str(message.subscription_line),
            },
            "scope": {"DataType": "String", "StringValue": message.scope},
        }
        try:
            response = self._client.send_message(
                QueueUrl=url, MessageBody=message.to_json(), MessageAttributes=attributes
            )
        except Exception as exc:  # endpoint down, throttled, access denied: not stored
            raise QueueUnavailable(f"cannot send to queue: {type(exc).__name__}") from None
        return response["MessageId"]


WALK_HOLD_SECONDS = 30


def receive_all(
    client: SQSClient,
    url: str,
    *,
    limit: int = 10_000,
    hold_seconds: int = 0,
    wait_seconds: int = 1,
) -> list[dict[str, Any]]:
    """Every message in a queue (up to `limit`), each once. SQS has no peek: messages are held
    invisible while the queue is walked, or it would hand back the same first ten again and
    again. With hold_seconds=0 they are released at the end (a look, not a take); otherwise
    they stay held that long, for the caller to act on. Note that every read counts as a
    receive towards a queue's maxReceiveCount."""
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
