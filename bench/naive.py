"""A naive adapter, for comparison only: the job done the way a first attempt would do it.

Eager imports; a new boto3 client, a fresh secret read and a new connection pool per
invocation; records claimed, posted and recorded one after another; one SendMessage and one
UpdateItem per failure. It signs, claims and queues like the real adapter, so that the two
are measured doing the same work against the same stand-ins; it is not used by the product.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

import boto3
import urllib3


def _clients() -> tuple[Any, Any, Any]:
    return boto3.client("secretsmanager"), boto3.client("dynamodb"), boto3.client("sqs")


def _secret(manager: Any, secret_id: str, field: str) -> Any:
    return json.loads(manager.get_secret_value(SecretId=secret_id)["SecretString"])[field]


def _authentic(headers: dict[str, str], body: bytes, secrets: list[str]) -> bool:
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    offered = headers.get("webhook-signature", "").split(" ")
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = (
            "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        )
        if expected in offered:
            return True
    return False


def _post(
    http: urllib3.PoolManager, token: str, record: dict[str, Any]
) -> urllib3.BaseHTTPResponse:
    return http.request(
        "POST",
        os.environ["PIRIOD_API_URL"] + "/usages/",
        body=json.dumps(
            {k: record[k] for k in ("subscription_line", "date_time", "quantity")}
        ).encode(),
        headers={
            "Authorization": f"Token {token}",
            "x-simple-workspace": os.environ["PIRIOD_WORKSPACE_ID"],
            "content-type": "application/json",
        },
        timeout=urllib3.Timeout(connect=3, read=8),
    )


def webhook_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    manager, dynamodb, sqs = _clients()
    headers = {k.lower(): v for k, v in event["headers"].items()}
    body = event["body"].encode()
    if not _authentic(
        headers, body, _secret(manager, os.environ["WEBHOOK_SECRET_ID"], "signing_secrets")
    ):
        return {"statusCode": 401, "body": "{}"}
    token = _secret(manager, os.environ["PIRIOD_TOKEN_SECRET_ID"], "api_token")
    data = json.loads(body)
    records = data["usages"] if "usages" in data else [data]
    http = urllib3.PoolManager()
    table = os.environ["IDEMPOTENCY_TABLE"]
    results = []
    for index, record in enumerate(records):
        key = {
            "pk": {
                "S": "naive#"
                + (record.get("idempotency_key") or f"{headers['webhook-id']}:{index}")
            }
        }
        try:
            dynamodb.put_item(
                TableName=table,
                Item={**key, "status": {"S": "in_progress"}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except dynamodb.exceptions.ConditionalCheckFailedException:
            results.append({"index": index, "status": "duplicate"})
            continue
        try:
            response = _post(http, token, record)
            if response.status == 201:
                usage_id = json.loads(response.data)["id"]
                dynamodb.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET #s = :s, usage_id = :u",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":s": {"S": "posted"}, ":u": {"N": str(usage_id)}},
                )
                results.append({"index": index, "status": "posted", "usage_id": usage_id})
                continue
            failure = f"HTTP {response.status}"
        except urllib3.exceptions.HTTPError as exc:
            failure = str(exc)
        sqs.send_message(
            QueueUrl=os.environ["REPLAY_QUEUE_URL"],
            MessageBody=json.dumps({"record": record, "key": key["pk"]["S"], "error": failure}),
        )
        dynamodb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": "queued"}},
        )
        results.append({"index": index, "status": "queued"})
    return {"statusCode": 202, "body": json.dumps({"results": results})}


def replay_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    manager, dynamodb, _ = _clients()
    token = _secret(manager, os.environ["PIRIOD_TOKEN_SECRET_ID"], "api_token")
    http = urllib3.PoolManager()
    failures = []
    for message in event["Records"]:
        queued = json.loads(message["body"])
        try:
            response = _post(http, token, queued["record"])
        except urllib3.exceptions.HTTPError:
            failures.append({"itemIdentifier": message["messageId"]})
            continue
        if response.status != 201:
            failures.append({"itemIdentifier": message["messageId"]})
            continue
        dynamodb.update_item(
            TableName=os.environ["IDEMPOTENCY_TABLE"],
            Key={"pk": {"S": queued["key"]}},
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": "posted"}},
        )
    return {"batchItemFailures": failures}
