"""SQS: ReplayQueue for records that may pass later, DeadLetterQueue for a person to see."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from piriod_adapter.lifecycle import Fate, Placement
from piriod_adapter.models import FailureKind, QueuedRecord
from piriod_adapter.observability import logger
from piriod_adapter.table import error_code

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        MessageAttributeValueTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

REPLAY = "replay"
DEAD_LETTER = "dead-letter"
MAX_DELAY_SECONDS = 900  # SQS's DelaySeconds ceiling
MAX_PARALLEL_SENDS = 10
GATHER_WAIT_SECONDS = 0.2  # the longest a message waits behind calls in flight


class QueueUnavailable(RuntimeError):
    """The message could not be stored."""


class Held(NamedTuple):
    """A message received from a queue and held invisible, to act on."""

    message_id: str
    body: str
    sent_at: datetime  # SentTimestamp: when SQS took it
    receipt_handle: str


class FailureQueue:
    def __init__(
        self,
        client: "Callable[[], SQSClient]",
        replay_url: str,
        dead_letter_url: str,
        gather_wait: float = GATHER_WAIT_SECONDS,
    ) -> None:
        self._make_client = client  # made on first use: a delivery with no failure needs none
        self.replay_url = replay_url
        self.dead_letter_url = dead_letter_url
        self._gather_wait = gather_wait
        # messages waiting to be sent together (send), and the calls in flight, by queue
        self._gather = threading.Condition()
        self._gathered: dict[str, list[_Sending]] = {}
        self._calls: dict[str, int] = {}

    @cached_property
    def _client(self) -> "SQSClient":
        return self._make_client()

    def url(self, queue: str) -> str:
        return self.replay_url if queue == REPLAY else self.dead_letter_url

    def place(self, message: QueuedRecord) -> Placement | None:
        """Where a failed record waits (SPEC 5): refused for the record itself ->
        DeadLetterQueue, for a person; any passing failure -> ReplayQueue, for
        ReplayFunction. None when it could not be placed."""
        if message.failure.kind is FailureKind.REJECTED:
            return self.send(DEAD_LETTER, message, fate=Fate.REJECTED)
        return self.send(REPLAY, message)

    def place_failed(self, _sub: object, message: QueuedRecord) -> Placement | None:
        """The lifecycle's sink for the webhook, the flush and the operator."""
        return self.place(message)

    def send(
        self, queue: str, message: QueuedRecord, delay: int = 0, fate: Fate = Fate.QUEUED
    ) -> Placement | None:
        """One message, with the fate it gives its record; None when SQS did not take it.

        Records failing side by side (a delivery's workers while Piriod is down, a replay's
        batch) send together: while a call to the queue is in flight the next messages for it
        gather, and the first of them to find no call in flight sends itself and the others
        in one SendMessageBatch (ten at most, under MAX_BATCH_BYTES); each placer returns with
        its own answer. A message that finds nothing in flight goes at once, alone, with
        SendMessage: nobody waits for a message that may not come. One that has waited
        GATHER_WAIT_SECONDS (SQS slow) goes itself, with what gathered, beside the calls in
        flight: a slow SQS costs a placer about one call, as when each sent its own."""
        try:
            body = message.to_json()
            size = len(body.encode())
        except Exception as exc:
            logger.warning("cannot write queue message", extra={"error": type(exc).__name__})
            return None
        mine = _Sending(message, body, size, max(0, min(MAX_DELAY_SECONDS, delay)), fate)
        gather = self._gather
        overdue_at = time.monotonic() + self._gather_wait
        with gather:
            gathered = self._gathered.setdefault(queue, [])
            gathered.append(mine)
        try:
            with gather:
                while not mine.done:
                    now = time.monotonic()
                    if not mine.taken and (not self._calls.get(queue) or now >= overdue_at):
                        break  # this placer sends
                    # taken into a call in flight: its end is near (botocore's timeouts)
                    gather.wait(None if mine.taken else overdue_at - now)
                if mine.done:
                    return mine.placement
                batch = _take(gathered, mine)
                self._calls[queue] = self._calls.get(queue, 0) + 1
        except BaseException:  # interrupted while waiting: its message is not sent for it
            with gather:
                if not mine.taken:
                    gathered.remove(mine)
            raise
        try:
            self._send_together(queue, batch)
        finally:
            with gather:
                for sending in batch:
                    sending.done = True
                self._calls[queue] -= 1
                gather.notify_all()
        return mine.placement

    def _send_together(self, queue: str, batch: "list[_Sending]") -> None:
        """One call for the batch (SendMessage for one message); each message's placement is
        set when SQS took it. A message SQS could not take for its own reasons (throttled,
        an internal error), or a batch refused whole for one bad entry, is sent again alone,
        with botocore's retries."""
        if len(batch) == 1:
            self._send_one(queue, batch[0])
            return
        try:
            answer = self._client.send_message_batch(
                QueueUrl=self.url(queue),
                Entries=[
                    _entry(n, sending.body, sending.delay, sending.message)
                    for n, sending in enumerate(batch)
                ],
            )
        except Exception as exc:  # endpoint down, throttled, access denied, one bad entry
            if _refused_whole(exc):
                for sending in batch:
                    self._send_one(queue, sending)
                return
            logger.warning(
                "cannot send to queue", extra={"queue": queue, "error": type(exc).__name__}
            )
            return
        for ok in answer.get("Successful", []):
            sending = batch[int(ok["Id"])]
            sending.placement = Placement(queue, ok["MessageId"], sending.message, sending.fate)
        for refused in answer.get("Failed", []):
            if refused.get("SenderFault"):
                logger.warning(
                    "cannot send to queue", extra={"queue": queue, "error": refused.get("Code")}
                )
            else:
                self._send_one(queue, batch[int(refused["Id"])])

    def _send_one(self, queue: str, sending: "_Sending") -> None:
        try:
            response = self._client.send_message(
                QueueUrl=self.url(queue),
                MessageBody=sending.body,
                DelaySeconds=sending.delay,
                MessageAttributes=_attributes(sending.message),
            )
        except Exception as exc:  # endpoint down, throttled, access denied, too large
            logger.warning(
                "cannot send to queue", extra={"queue": queue, "error": type(exc).__name__}
            )
            return
        sending.placement = Placement(queue, response["MessageId"], sending.message, sending.fate)

    def send_all(self, sends: list[tuple[str, QueuedRecord, int]]) -> list[Placement | None]:
        """Send (queue, message, delay seconds) with SendMessageBatch: ten per call and at
        most 200 KiB per call, the calls side by side. None for each message SQS did not
        take (or that could not be written: it touches only itself)."""
        bodies: dict[int, str] = {}
        for i, (_, message, _) in enumerate(sends):
            try:
                bodies[i] = message.to_json()
            except Exception as exc:
                logger.warning("cannot write queue message", extra={"error": type(exc).__name__})
        calls = [
            (queue, chunk)
            for queue in (REPLAY, DEAD_LETTER)
            for chunk in _chunks(
                [(i, bodies[i]) for i, (q, _, _) in enumerate(sends) if q == queue and i in bodies]
            )
        ]
        placed: list[Placement | None] = [None] * len(sends)

        def call(queue: str, chunk: list[tuple[int, str]]) -> None:
            entries = [
                _entry(i, body, max(0, min(MAX_DELAY_SECONDS, sends[i][2])), sends[i][1])
                for i, body in chunk
            ]
            try:
                response = self._client.send_message_batch(
                    QueueUrl=self.url(queue), Entries=entries
                )
            except Exception as exc:  # endpoint down, throttled, access denied
                logger.warning(
                    "cannot send to queue", extra={"queue": queue, "error": type(exc).__name__}
                )
                return
            for ok in response.get("Successful", []):
                i = int(ok["Id"])
                fate = Fate.QUEUED if queue == REPLAY else Fate.REJECTED
                placed[i] = Placement(queue, ok["MessageId"], sends[i][1], fate)

        if len(calls) <= 1:
            for queue, chunk in calls:
                call(queue, chunk)
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SENDS, len(calls))) as pool:
                list(pool.map(lambda c: call(*c), calls))
        return placed

    def hide(self, queue: str, receipts: list[tuple[str, int]]) -> int:
        """Make received messages invisible for their seconds each (a replay's back-off);
        returns how many SQS did not take (their queue's own visibility timeout applies)."""
        failed = 0
        for start in range(0, len(receipts), 10):
            chunk = receipts[start : start + 10]
            try:
                response = self._client.change_message_visibility_batch(
                    QueueUrl=self.url(queue),
                    Entries=[
                        {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                        for n, (handle, seconds) in enumerate(chunk)
                    ],
                )
                failed += len(response.get("Failed", []))
            except Exception as exc:
                logger.warning("could not set back-off", extra={"error": type(exc).__name__})
                failed += len(chunk)
        return failed

    def delete(self, queue: str, receipt_handle: str) -> None:
        self._client.delete_message(QueueUrl=self.url(queue), ReceiptHandle=receipt_handle)

    def walk(self, queue: str, hold_seconds: int, limit: int) -> list[Held]:
        """Every visible message of `queue` (up to `limit`), each once, held invisible for
        `hold_seconds` (see receive_all: never walk ReplayQueue)."""
        messages = receive_all(
            self._client, self.url(queue), limit=limit, hold_seconds=hold_seconds
        )
        return [
            Held(
                message_id=m["MessageId"],
                body=m["Body"],
                sent_at=datetime.fromtimestamp(
                    int(m.get("Attributes", {}).get("SentTimestamp", "0")) / 1000, UTC
                ),
                receipt_handle=m["ReceiptHandle"],
            )
            for m in messages
        ]

    def purge(self, queue: str) -> None:
        """Delete every message of `queue` (the operator's purge)."""
        self._client.purge_queue(QueueUrl=self.url(queue))

    def release(self, queue: str, receipt_handles: list[str]) -> None:
        """Make held messages visible again at once."""
        release(self._client, self.url(queue), receipt_handles)

    def show_again(self, queue: str, receipt_handle: str) -> None:
        """Make one received message visible again at once."""
        self._client.change_message_visibility(
            QueueUrl=self.url(queue), ReceiptHandle=receipt_handle, VisibilityTimeout=0
        )

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


MAX_BATCH_BYTES = 200 * 1024  # SendMessageBatch takes 256 KiB in all; attributes need some


class _Sending:
    """A message waiting to be sent (FailureQueue.send), and then its placement."""

    __slots__ = ("body", "delay", "done", "fate", "message", "placement", "size", "taken")

    def __init__(self, message: QueuedRecord, body: str, size: int, delay: int, fate: Fate) -> None:
        self.message = message
        self.body = body
        self.size = size
        self.delay = delay
        self.fate = fate
        self.taken = False  # in a call
        self.done = False  # its call returned
        self.placement: Placement | None = None


def _take(gathered: list[_Sending], first: _Sending) -> list[_Sending]:
    """`first`, and the oldest other gathered messages that fit one SendMessageBatch with it
    (ten, under MAX_BATCH_BYTES), taken off the list."""
    batch, size = [first], first.size
    for sending in gathered:
        if len(batch) == 10:
            break
        if sending is not first and size + sending.size <= MAX_BATCH_BYTES:
            batch.append(sending)
            size += sending.size
    for sending in batch:
        sending.taken = True
        gathered.remove(sending)
    return batch


def _refused_whole(exc: Exception) -> bool:
    """A batch SQS refused for what one of its entries holds (a 400 that is not throttling):
    each message is worth sending alone."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 400 and "Throttl" not in (error_code(exc) or "")


def _entry(
    n: int, body: str, delay: int, message: QueuedRecord
) -> "SendMessageBatchRequestEntryTypeDef":
    """Entry `n` of a SendMessageBatch call."""
    return {
        "Id": str(n),
        "MessageBody": body,
        "DelaySeconds": delay,
        "MessageAttributes": _attributes(message),
    }


def _chunks(bodies: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Bodies grouped ten at a time, each group under MAX_BATCH_BYTES."""
    groups: list[list[tuple[int, str]]] = []
    size = 0
    for item in bodies:
        length = len(item[1].encode())
        if not groups or len(groups[-1]) == 10 or size + length > MAX_BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += length
    return groups


def _attributes(message: QueuedRecord) -> "dict[str, MessageAttributeValueTypeDef]":
    attributes: dict[str, MessageAttributeValueTypeDef] = {
        "kind": {"DataType": "String", "StringValue": message.failure.kind.value},
        "scope": {"DataType": "String", "StringValue": message.usage.key.scope},
    }
    if message.usage.subscription_line is not None:
        attributes["subscription_line"] = {
            "DataType": "Number",
            "StringValue": str(message.usage.subscription_line),
        }
    return attributes


WALK_HOLD_SECONDS = 30


def receive_all(
    client: "SQSClient",
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


def release(client: "SQSClient", url: str, receipt_handles: list[str]) -> None:
    """Make received messages visible again at once."""
    for start in range(0, len(receipt_handles), 10):
        client.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for i, handle in enumerate(receipt_handles[start : start + 10])
            ],
        )
