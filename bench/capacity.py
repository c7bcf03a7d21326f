"""DynamoDB capacity priced from the requests made, with DynamoDB's rules, for the benchmarks
(bench/aggregation.py prices its runtime client's requests through botocore hooks;
bench/aws_counter.py prices every request that passes through it).

Item size = attribute name bytes + value bytes (a number: (significant digits / 2) + 1). A
write costs 1 WCU per KB, a transactional one 2 WCU per KB, per item; an update is priced
on the larger of the item before and after it (read back after the request); a write that a
condition refused still costs the item's size. A GSI write costs 1 WCU per KB of the item
for each index the item enters, changes in or leaves (2 when its index key changes). A
strongly consistent read costs 1 RCU per 4 KB per item, eventually consistent half; a query
0.5 RCU per 4 KB of the items returned.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KB = 1024


def value_size(value: dict[str, Any]) -> int:
    (kind, inner), *_ = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        digits = str(inner).lstrip("-+").lower().split("e")[0].replace(".", "")
        significant = digits.strip("0") or "0"
        return math.ceil(len(significant) / 2) + 1
    if kind == "B":
        return len(inner) if isinstance(inner, bytes) else len(str(inner)) * 3 // 4
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in inner)
    if kind == "NS":
        return sum(value_size({"N": n}) for n in inner)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
    return len(json.dumps(inner))


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def units(size: int, per: int) -> int:
    return max(1, math.ceil(size / per))


def key_of(request: dict[str, Any]) -> str:
    """The item key of a write: its Item's pk, or its Key's."""
    item: dict[str, Any] = request.get("Item") or request.get("Key") or {}
    return str(item["pk"]["S"])


@dataclass
class Capacity:
    """WCU and RCU by category, from the requests priced."""

    wcu: Counter[str] = field(default_factory=Counter)
    gsi_wcu: Counter[str] = field(default_factory=Counter)
    cancelled_wcu: Counter[str] = field(default_factory=Counter)  # would-be, upper bound
    rcu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float)
    )  # waiting on DynamoDB (moto), by call
    conflicts: int = 0  # TransactionConflict seen in a TransactWriteItems answer
    cancelled: int = 0  # TransactWriteItems cancelled (duplicates, closed generations)
    items_over_1kb: int = 0
    largest_item: int = 0

    def total_wcu(self) -> int:
        return sum(self.wcu.values()) + sum(self.gsi_wcu.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "wcu": dict(self.wcu),
            "gsi_wcu": dict(self.gsi_wcu),
            "cancelled_wcu_upper_bound": dict(self.cancelled_wcu),
            "rcu": dict(self.rcu),
            "calls": dict(self.calls),
            "seconds_waiting_by_call": {k: round(v, 3) for k, v in self.seconds.items()},
            "transaction_conflicts": self.conflicts,
            "transactions_cancelled": self.cancelled,
            "items_over_1kb": self.items_over_1kb,
            "largest_item_bytes": self.largest_item,
        }


class Pricer:
    """Prices one table's requests. `read_back(pks)` reads items as they are now (after an
    update), by a client that is not measured; `category(pk)` names what a write is for;
    `reads` names the reads' category."""

    def __init__(
        self,
        indexes: list[tuple[str, ...]],
        read_back: Callable[[list[str]], dict[str, dict[str, Any]]],
        category: Callable[[str], str] = lambda pk: "writes",
        reads: Callable[[], str] = lambda: "reads",
    ) -> None:
        self.indexes = indexes
        self.read_back = read_back
        self.category = category
        self.reads = reads
        self.shadow: dict[str, dict[str, Any]] = {}
        self.capacity = Capacity()

    def _write(self, pk: str, after: dict[str, Any] | None, transactional: bool) -> None:
        before = self.shadow.get(pk)
        size = max(item_size(before), item_size(after))
        self.capacity.largest_item = max(self.capacity.largest_item, size)
        self.capacity.items_over_1kb += size > KB
        what = self.category(pk)
        self.capacity.wcu[what] += units(size, KB) * (2 if transactional else 1)
        for keys in self.indexes:
            was = before is not None and all(k in before for k in keys)
            now = after is not None and all(k in after for k in keys)
            assert before is not None or not was
            if was and now:
                assert before is not None and after is not None
                if any(before[k] != after[k] for k in keys):
                    self.capacity.gsi_wcu[what] += units(item_size(before), KB)
                    self.capacity.gsi_wcu[what] += units(item_size(after), KB)
                elif before != after:
                    self.capacity.gsi_wcu[what] += units(item_size(after), KB)
            elif now:
                self.capacity.gsi_wcu[what] += units(item_size(after), KB)
            elif was:
                self.capacity.gsi_wcu[what] += units(item_size(before), KB)
        if after is None:
            self.shadow.pop(pk, None)
        else:
            self.shadow[pk] = after

    def price(self, op: str, request: dict[str, Any], parsed: dict[str, Any], status: int) -> None:
        self.capacity.calls[op] += 1
        error = parsed.get("Error", {}).get("Code") if status >= 300 else None
        if error is None and status >= 300:
            error = str(parsed.get("__type", "error")).rsplit("#", 1)[-1]
        reads = self.reads()
        if op == "TransactWriteItems":
            actions = request.get("TransactItems", [])
            if error is not None:
                reasons = parsed.get("CancellationReasons") or []
                if error == "TransactionConflictException" or any(
                    r.get("Code") == "TransactionConflict" for r in reasons
                ):
                    self.capacity.conflicts += 1
                self.capacity.cancelled += 1
                for action in actions:
                    (_, op_body), *_ = action.items()
                    pk = key_of(op_body)
                    size = max(item_size(op_body.get("Item")), item_size(self.shadow.get(pk)))
                    self.capacity.cancelled_wcu[self.category(pk)] += 2 * units(size, KB)
                return
            updated = [a["Update"]["Key"]["pk"]["S"] for a in actions if "Update" in a] + [
                a["Delete"]["Key"]["pk"]["S"] for a in actions if "Delete" in a
            ]
            after = self.read_back(updated) if updated else {}
            for action in actions:
                if "Put" in action:
                    item = action["Put"]["Item"]
                    self._write(item["pk"]["S"], item, transactional=True)
                elif "Update" in action or "Delete" in action:
                    pk = (action.get("Update") or action["Delete"])["Key"]["pk"]["S"]
                    self._write(pk, after.get(pk), transactional=True)
                # a ConditionCheck reads: 2 RCU per 4 KB, transactional
                elif "ConditionCheck" in action:
                    pk = action["ConditionCheck"]["Key"]["pk"]["S"]
                    self.capacity.rcu[reads] += 2 * units(item_size(self.shadow.get(pk)), 4 * KB)
            return
        if op in ("PutItem", "UpdateItem", "DeleteItem"):
            pk = key_of(request)
            if error is not None:  # a refused condition still consumes write capacity
                if error == "ConditionalCheckFailedException":
                    self.capacity.wcu[self.category(pk)] += units(
                        item_size(self.shadow.get(pk)), KB
                    )
                return
            if op == "PutItem":
                self._write(pk, request["Item"], transactional=False)
            elif op == "DeleteItem":
                self._write(pk, None, transactional=False)
            else:
                self._write(pk, self.read_back([pk]).get(pk), transactional=False)
            return
        if op == "BatchWriteItem":
            for requests in request.get("RequestItems", {}).values():
                for one in requests:
                    if "PutRequest" in one:
                        item = one["PutRequest"]["Item"]
                        self._write(item["pk"]["S"], item, transactional=False)
                    else:
                        self._write(one["DeleteRequest"]["Key"]["pk"]["S"], None, False)
            return
        if error is not None:
            return
        if op == "BatchGetItem":
            for table, items in parsed.get("Responses", {}).items():
                asked = request.get("RequestItems", {}).get(table, {})
                found = {i["pk"]["S"]: i for i in items}
                factor = 1.0 if asked.get("ConsistentRead") else 0.5
                for key in asked.get("Keys", []):
                    size = item_size(found.get(key["pk"]["S"]))
                    self.capacity.rcu[reads] += factor * units(size, 4 * KB)
        elif op == "GetItem":
            factor = 1.0 if request.get("ConsistentRead") else 0.5
            self.capacity.rcu[reads] += factor * units(item_size(parsed.get("Item")), 4 * KB)
        elif op in ("Query", "Scan"):
            size = sum(item_size(i) for i in parsed.get("Items", []))
            factor = 1.0 if request.get("ConsistentRead") else 0.5
            self.capacity.rcu[reads] += factor * units(size, 4 * KB)


def read_back_with(dynamodb: Any, table: str) -> Callable[[list[str]], dict[str, dict[str, Any]]]:
    """`read_back` for a Pricer: strongly consistent BatchGetItem through `dynamodb`, a
    client that is not the one measured."""

    def read_back(pks: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        todo = list(dict.fromkeys(pks))
        for start in range(0, len(todo), 100):
            keys = [{"pk": {"S": pk}} for pk in todo[start : start + 100]]
            while keys:
                answer = dynamodb.batch_get_item(
                    RequestItems={table: {"Keys": keys, "ConsistentRead": True}}
                )
                for item in answer.get("Responses", {}).get(table, []):
                    found[item["pk"]["S"]] = item
                keys = answer.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
        return found

    return read_back


def table_indexes(dynamodb: Any, table: str) -> list[tuple[str, ...]]:
    """The key attributes of each of the table's global secondary indexes."""
    description = dynamodb.describe_table(TableName=table)["Table"]
    return [
        tuple(k["AttributeName"] for k in index["KeySchema"])
        for index in description.get("GlobalSecondaryIndexes", [])
    ]
