"""The queue module's SQS batching, against a fake SQS client (no network):
SendMessageBatch takes at most 10 messages and 256 KiB a call."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from piriod_adapter.lifecycle import Fate
from piriod_adapter.models import (
    Failure,
    FailureKind,
    KeyKind,
    QueuedRecord,
    Tenant,
    Usage,
    UsageKey,
)
from piriod_adapter.queue import DEAD_LETTER, MAX_BATCH_BYTES, REPLAY, FailureQueue

REPLAY_URL, DEAD_URL = "https://sqs/replay", "https://sqs/dead"


class FakeSQS:
    """SendMessageBatch as SQS answers it, from any thread (the queue sends its calls side by
    side, so the order they arrive in is not fixed): every entry is taken but those whose Id
    is in `failed`; each call is recorded with its queue and entries."""

    def __init__(self, failed: frozenset[int] = frozenset()) -> None:
        self.failed = failed
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []
        self._lock = threading.Lock()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert 1 <= len(Entries) <= 10, "SQS takes 1 to 10 entries a call"
        with self._lock:
            self.calls.append((QueueUrl, Entries))
        return {
            "Successful": [
                {"Id": e["Id"], "MessageId": f"m{e['Id']}", "MD5OfMessageBody": "x"}
                for e in Entries
                if int(e["Id"]) not in self.failed
            ],
            "Failed": [
                {"Id": e["Id"], "SenderFault": False, "Code": "InternalError"}
                for e in Entries
                if int(e["Id"]) in self.failed
            ],
        }


def message(n: int, error: str = "") -> QueuedRecord:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    return QueuedRecord(
        usage=Usage(
            subscription_line=1 + n,
            date_time=now,
            quantity=Decimal(1),
            key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=f"k{n}"),
        ),
        tenant=Tenant(workspace="w", test_mode=False),
        failure=Failure(kind=FailureKind.TRANSIENT, error=error or None, at=now),
        attempts=1,
        first_failure_at=now,
    )


def test_twenty_five_messages_go_ten_at_a_time_per_queue() -> None:
    # given 23 records for ReplayQueue and 2 for DeadLetterQueue, and an SQS that refuses one
    sends = [(REPLAY, message(n), 0) for n in range(23)] + [
        (DEAD_LETTER, message(n), 0) for n in range(23, 25)
    ]
    sqs = FakeSQS(failed=frozenset({24}))
    queue = FailureQueue(lambda: cast(Any, sqs), REPLAY_URL, DEAD_URL)
    # when they are sent
    placed = queue.send_all(sends)
    # then SQS is asked in calls of at most ten, one queue each: 10, 10, 3 and 2
    sizes = sorted((url, len(entries)) for url, entries in sqs.calls)
    assert sizes == [(DEAD_URL, 2), (REPLAY_URL, 3), (REPLAY_URL, 10), (REPLAY_URL, 10)]
    sent = sorted(int(e["Id"]) for url, entries in sqs.calls for e in entries if url == REPLAY_URL)
    assert sent == list(range(23))
    # and each message SQS took has its place (the one it refused has none)
    assert [p.message_id if p else None for p in placed] == [f"m{n}" for n in range(24)] + [None]
    assert {p.fate for p in placed[:23] if p} == {Fate.QUEUED}
    assert placed[23] is not None and placed[23].fate is Fate.REJECTED


def test_a_call_never_carries_more_than_the_batch_byte_limit() -> None:
    # given 5 records of about 60 KiB each (long error texts, as a 5xx detail can be)
    big = [message(n, error="x" * 400) for n in range(5)]
    padded = [
        m.model_copy(
            update={"usage": m.usage.model_copy(update={"original": {"pad": "y" * 60_000}})}
        )
        for m in big
    ]
    sizes = [len(m.to_json().encode()) for m in padded]
    assert all(50_000 < size < 70_000 for size in sizes)
    # then they are split so that no call passes 200 KiB of bodies: 3 and 2
    sqs = FakeSQS()
    queue = FailureQueue(lambda: cast(Any, sqs), REPLAY_URL, DEAD_URL)
    placed = queue.send_all([(REPLAY, m, 0) for m in padded])
    assert all(p is not None for p in placed)
    calls = [sum(len(e["MessageBody"].encode()) for e in entries) for _, entries in sqs.calls]
    assert len(calls) == 2 and max(calls) <= MAX_BATCH_BYTES


# --- send: records failing side by side send together ----------------------------------------


class GatedSQS(FakeSQS):
    """FakeSQS with SendMessage too; the first call waits until `gate` opens (a call in
    flight while other records fail). `raises` makes every SendMessageBatch call fail;
    `sender_fault` is what a refused entry says; a message whose body is in `bad` is refused
    by SendMessage, and makes SendMessageBatch refuse its whole call (a 400)."""

    def __init__(
        self, failed: frozenset[int] = frozenset(), raises: bool = False, sender_fault: bool = False
    ) -> None:
        super().__init__(failed)
        self.gate = threading.Event()
        self.in_flight = threading.Event()
        self.raises = raises
        self.sender_fault = sender_fault
        self.bad: set[str] = set()
        self.singles: list[tuple[str, str]] = []

    def _first_waits(self) -> None:
        with self._lock:
            first = not self.in_flight.is_set()
            self.in_flight.set()
        if first:
            assert self.gate.wait(10)

    def send_message(self, QueueUrl: str, MessageBody: str, **_: Any) -> dict[str, Any]:
        self._first_waits()
        if MessageBody in self.bad:
            raise refused_whole()
        with self._lock:
            self.singles.append((QueueUrl, MessageBody))
            return {"MessageId": f"single-{len(self.singles)}"}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self._first_waits()
        if self.raises:
            with self._lock:
                self.calls.append((QueueUrl, Entries))
            raise ConnectionError("SQS unreachable")
        if any(e["MessageBody"] in self.bad for e in Entries):
            with self._lock:
                self.calls.append((QueueUrl, Entries))
            raise refused_whole()
        answer = super().send_message_batch(QueueUrl, Entries)
        for ok in answer["Successful"]:  # ids unique across calls, as SQS's are
            ok["MessageId"] = f"batch-{len(self.calls)}-{ok['Id']}"
        for refused in answer["Failed"]:
            refused["SenderFault"] = self.sender_fault
        return answer


def refused_whole() -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {
        "Error": {"Code": "InvalidParameterValue", "Message": "bad attribute"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    return ClientError(response, "SendMessageBatch")


def held_back(sqs: GatedSQS) -> FailureQueue:
    """A queue whose messages wait behind a call in flight as long as it lasts (here: for as
    long as a test holds it), however slowly a busy machine starts the placers' threads."""
    return FailureQueue(lambda: cast(Any, sqs), REPLAY_URL, DEAD_URL, gather_wait=60.0)


def send_side_by_side(
    queue: FailureQueue, sqs: GatedSQS, sends: list[tuple[str, QueuedRecord]]
) -> list[Any]:
    """The first send goes and is held in flight; the others gather behind it; then the
    first call returns. Each sender's own answer, in order."""
    placed: list[Any] = [None] * len(sends)
    returned: list[int] = []

    def run(n: int) -> None:
        q, m = sends[n]
        placed[n] = queue.send(q, m, fate=Fate.REJECTED if q == DEAD_LETTER else Fate.QUEUED)
        returned.append(n)

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert sqs.in_flight.wait(10)
    others = [threading.Thread(target=run, args=(n,)) for n in range(1, len(sends))]
    for t in others:
        t.start()
    for _ in range(500):  # every other sender waits behind a call in flight, or is done
        if sum(len(v) for v in queue._gathered.values()) + len(returned) == len(others):
            break
        threading.Event().wait(0.01)
    sqs.gate.set()
    for t in [first, *others]:
        t.join(10)
        assert not t.is_alive()
    return placed


def test_a_message_alone_goes_at_once_with_send_message() -> None:
    # given a queue with nothing in flight
    sqs = GatedSQS()
    sqs.gate.set()
    queue = FailureQueue(lambda: cast(Any, sqs), REPLAY_URL, DEAD_URL)
    # when one record is placed
    placement = queue.send(REPLAY, message(1))
    # then one SendMessage carried it, and the record has that message's id
    assert sqs.singles == [(REPLAY_URL, message(1).to_json())] and sqs.calls == []
    assert placement is not None and placement.message_id == "single-1"
    assert placement.message == message(1) and placement.fate is Fate.QUEUED


def test_records_failing_while_a_send_is_in_flight_go_ten_a_call() -> None:
    # given one record's message in flight, and 12 more records failing meanwhile
    sqs = GatedSQS()
    queue = held_back(sqs)
    sends = [(REPLAY, message(n)) for n in range(13)]
    # when the call in flight returns
    placed = send_side_by_side(queue, sqs, sends)
    # then the 12 went in two SendMessageBatch calls (10 and 2), 3 calls for 13 records
    assert len(sqs.singles) == 1
    assert sorted(len(entries) for _, entries in sqs.calls) == [2, 10]
    # and every record has its own message id and its own message
    assert all(p is not None for p in placed)
    assert len({p.message_id for p in placed}) == 13
    assert [p.message for p in placed] == [m for _, m in sends]
    bodies = {e["MessageBody"] for _, entries in sqs.calls for e in entries}
    assert bodies == {m.to_json() for _, m in sends[1:]}


def test_a_message_sqs_refuses_for_itself_in_a_batch_is_not_placed_and_the_others_are() -> None:
    # given 4 records gathered behind one in flight, and SQS refusing the second entry for
    # what it holds (a sender fault)
    sqs = GatedSQS(failed=frozenset({1}), sender_fault=True)
    queue = held_back(sqs)
    sends = [(REPLAY, message(n)) for n in range(5)]
    # when they are sent
    placed = send_side_by_side(queue, sqs, sends)
    # then exactly the refused one has no place (its record is answered not stored)
    [(_, entries)] = sqs.calls
    refused = entries[1]["MessageBody"]
    assert [p is None for p in placed] == [m.to_json() == refused for _, m in sends]
    assert sum(p is None for p in placed) == 1


def test_an_entry_sqs_could_not_take_for_its_own_reasons_is_sent_again_alone() -> None:
    # given records gathered behind one in flight, and SQS failing the second entry (an
    # internal error, not the sender's fault)
    sqs = GatedSQS(failed=frozenset({1}))
    queue = held_back(sqs)
    sends = [(REPLAY, message(n)) for n in range(5)]
    # when they are sent
    placed = send_side_by_side(queue, sqs, sends)
    # then that one went again with SendMessage, and every record is placed, once
    [(_, entries)] = sqs.calls
    assert sqs.singles[-1] == (REPLAY_URL, entries[1]["MessageBody"])
    assert all(p is not None for p in placed) and len({p.message_id for p in placed}) == 5


def test_a_batch_refused_whole_for_one_entry_sends_each_message_alone() -> None:
    # given records gathered behind one in flight, one of them a message SQS refuses
    sqs = GatedSQS()
    queue = held_back(sqs)
    sends = [(REPLAY, message(n)) for n in range(5)]
    sqs.bad.add(sends[2][1].to_json())
    # when they are sent
    placed = send_side_by_side(queue, sqs, sends)
    # then only that one is not placed: the others went alone after the batch was refused
    assert [p is None for p in placed] == [False, False, True, False, False]
    assert {m.to_json() for _, m in sends} - {b for _, b in sqs.singles} == {sends[2][1].to_json()}


def test_a_slow_call_in_flight_holds_the_others_back_briefly_then_they_go_themselves() -> None:
    # given one record's message in a call that does not return (SQS slow)
    sqs = GatedSQS()
    queue = FailureQueue(lambda: cast(Any, sqs), REPLAY_URL, DEAD_URL)
    first = threading.Thread(target=queue.send, args=(REPLAY, message(0)))
    first.start()
    assert sqs.in_flight.wait(10)
    # when 12 more records fail meanwhile
    placed: list[Any] = [None] * 12

    def run(n: int) -> None:
        placed[n] = queue.send(REPLAY, message(n + 1))

    others = [threading.Thread(target=run, args=(n,)) for n in range(12)]
    for t in others:
        t.start()
    # then they are placed while that call is still in flight, in batches of their own
    for t in others:
        t.join(10)
    assert not any(t.is_alive() for t in others) and all(p is not None for p in placed)
    assert first.is_alive() and sum(len(e) for _, e in sqs.calls) + len(sqs.singles) == 12
    sqs.gate.set()
    first.join(10)


def test_a_failed_batch_call_places_none_of_its_messages_and_the_queue_goes_on() -> None:
    # given records gathered behind one in flight, and SQS unreachable for the batch
    sqs = GatedSQS(raises=True)
    queue = held_back(sqs)
    sends = [(REPLAY, message(n)) for n in range(4)]
    # when they are sent
    placed = send_side_by_side(queue, sqs, sends)
    # then the one sent alone is placed, the three of the failed call are not
    assert placed[0] is not None and placed[1:] == [None, None, None]
    # and the next record is sent (nothing stays in flight)
    sqs.raises = False
    again = queue.send(REPLAY, message(9))
    assert again is not None and again.message == message(9)


def test_each_queue_gathers_its_own_messages() -> None:
    # given records for both queues failing behind one in flight
    sqs = GatedSQS()
    queue = held_back(sqs)
    sends = [(REPLAY, message(0))] + [
        (DEAD_LETTER if n % 2 else REPLAY, message(n)) for n in range(1, 7)
    ]
    # when they are sent
    placed = send_side_by_side(queue, sqs, sends)
    # then every call went to one queue, with that queue's records, and each has its fate
    for url, entries in sqs.calls:
        wanted = DEAD_LETTER if url == DEAD_URL else REPLAY
        assert {e["MessageBody"] for e in entries} <= {m.to_json() for q, m in sends if q == wanted}
    for (q, _), p in zip(sends, placed, strict=True):
        assert p is not None and p.queue == q
        assert p.fate is (Fate.REJECTED if q == DEAD_LETTER else Fate.QUEUED)
