"""X-Ray subsegments without the SDK: sent over UDP to the daemon, only when on and sampled."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from piriod_adapter.tracing import Tracer

TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", f"127.0.0.1:{receiver.getsockname()[1]}")
    monkeypatch.setenv("_X_AMZN_TRACE_ID", TRACE)
    yield receiver
    receiver.close()


def received(receiver: socket.socket) -> dict[str, object]:
    header, _, body = receiver.recv(65536).partition(b"\n")
    assert json.loads(header) == {"format": "json", "version": 1}
    document: dict[str, object] = json.loads(body)
    return document


def test_a_call_is_a_subsegment_of_the_invocation(daemon: socket.socket) -> None:
    # given tracing on in a sampled invocation
    tracer = Tracer(enabled=True)
    # when a call is timed
    with tracer.subsegment("Piriod") as trace:
        trace["http"] = {"response": {"status": 201}}
    # then the daemon gets a subsegment under the invocation's segment
    document = received(daemon)
    assert document["name"] == "Piriod" and document["type"] == "subsegment"
    assert document["trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert document["parent_id"] == "53995c3f42cd8ad8"
    assert document["http"] == {"response": {"status": 201}}
    assert float(document["end_time"]) >= float(document["start_time"])  # type: ignore[arg-type]


def test_off_or_not_sampled_sends_nothing(
    daemon: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon.settimeout(0.3)
    with Tracer(enabled=False).subsegment("Piriod"):
        pass
    monkeypatch.setenv("_X_AMZN_TRACE_ID", TRACE.replace("Sampled=1", "Sampled=0"))
    with Tracer(enabled=True).subsegment("Piriod"):
        pass
    with pytest.raises(TimeoutError):
        daemon.recv(65536)


def test_a_failing_call_is_marked_and_still_sent(daemon: socket.socket) -> None:
    tracer = Tracer(enabled=True)
    with pytest.raises(ConnectionError), tracer.subsegment("Piriod"):
        raise ConnectionError("reset")
    assert received(daemon)["fault"] is True


def test_aws_calls_become_subsegments(daemon: socket.socket) -> None:
    import botocore.session
    from botocore.stub import Stubber

    # given a client of a session the tracer watches
    session = botocore.session.get_session()
    Tracer(enabled=True).watch_aws(session)
    client = session.create_client(
        "sqs",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    # when it makes a call (answered by botocore's stubber)
    with Stubber(client) as stub:
        stub.add_response("get_queue_url", {"QueueUrl": "https://sqs/q"})
        client.get_queue_url(QueueName="q")  # type: ignore[attr-defined]
    # then the call is a subsegment named after the service, with its operation
    document = received(daemon)
    assert document["name"] == "SQS" and document["namespace"] == "aws"
    assert document["aws"] == {"operation": "GetQueueUrl"}
