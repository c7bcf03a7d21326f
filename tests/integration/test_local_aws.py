"""The local AWS every test runs on (piriod_devkit.moto_isolated) is as atomic as DynamoDB:
a reader never sees an item halfway through its write."""

from __future__ import annotations

import threading

from piriod_devkit.aws import MotoServer, client, provision
from tests.conftest import TOKEN

ATTRIBUTES = [f"a{n}" for n in range(12)]


def test_a_concurrent_reader_never_sees_an_item_halfway_through_its_update(
    moto_server: MotoServer,
) -> None:
    # given a table, and a writer creating items with an UpdateItem of twelve SETs each (moto
    # builds such an item in place: first its key, then each attribute)
    table = provision(moto_server.url, token=TOKEN, signing_secrets=[]).table
    writer, reader = client("dynamodb", moto_server.url), client("dynamodb", moto_server.url)
    pks = [f"half#{n}" for n in range(60)]
    done = threading.Event()

    def write() -> None:
        try:
            for pk in pks:
                writer.update_item(
                    TableName=table,
                    Key={"pk": {"S": pk}},
                    UpdateExpression="SET " + ", ".join(f"{a} = :v" for a in ATTRIBUTES),
                    ExpressionAttributeValues={":v": {"S": "x"}},
                )
        finally:
            done.set()

    # when another client reads those items while they are being written
    seen: list[set[str]] = []
    thread = threading.Thread(target=write)
    thread.start()
    while not done.is_set():
        response = reader.batch_get_item(
            RequestItems={table: {"Keys": [{"pk": {"S": pk}} for pk in pks[:50]]}}
        )
        seen += [set(item) for item in response["Responses"][table]]
    thread.join()
    # then every item it read was whole: its key and all twelve attributes, never fewer
    assert seen, "the reader read nothing while the writer wrote"
    assert all(item == {"pk", *ATTRIBUTES} for item in seen), [
        sorted(item) for item in seen if item != {"pk", *ATTRIBUTES}
    ][:3]
