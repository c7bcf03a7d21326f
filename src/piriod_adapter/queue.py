"""SQS: ReplayQueue for records that may pass later, DeadLetterQueue for a person to see."""

from __future__ import annotations

from typing import TYPE_CHECKING

from piriod_adapter.models import QueuedRecord

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
