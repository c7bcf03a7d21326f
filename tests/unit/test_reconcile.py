"""reconcile's comparison of what a key holds now with what Piriod lists, at the quantity the
key holds (an amended record's last one), with a store and a Piriod of its own."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from piriod_adapter.lifecycle import KeyStatus
from piriod_adapter.runtime import Runtime
from piriod_adapter.table import Holding, KeyRecord
from piriod_operator.operator import reconcile, reconciled, render_reconcile

DAY = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 1, 23, 59, 59, tzinfo=UTC))


def runtime(records: list[KeyRecord], listed: list[dict[str, Any]]) -> Runtime:
    settings = SimpleNamespace(
        idempotency_ttl_days=35, piriod_workspace_id="acc_test", piriod_test_mode=False
    )
    store = SimpleNamespace(recorded_between=lambda line, since, until: records)
    piriod = SimpleNamespace(list_usages=lambda filters, tenant, deadline: iter(listed))
    return cast(Runtime, SimpleNamespace(settings=settings, store=store, piriod=piriod))


def amended(usage_id: int, quantity: str) -> KeyRecord:
    """A record delivered at 2.5 and amended to `quantity`, Piriod holding `usage_id`."""
    return KeyRecord(
        key="k#v1/usages#pay-2",
        status=KeyStatus.POSTED,
        usage_id=usage_id,
        date_time="2026-11-01T02:00:00Z",
        quantity=quantity,
        holding=Holding(quantity, usage_id),
    )


def usage(usage_id: int, quantity: Any) -> dict[str, Any]:
    return {
        "id": usage_id,
        "subscription_line": 812,
        "date_time": "2026-11-01T02:00:00Z",
        "quantity": quantity,
        "created": datetime.now(UTC).isoformat(),
    }


@pytest.mark.parametrize("listed", ["3.25", "3.2500", 3.25])
def test_an_amended_record_listed_at_its_last_quantity_is_matched(listed: Any) -> None:
    # given a record amended to 3.25, and Piriod listing its usage at 3.25 (as text, with
    # more places, or as a float)
    report = reconcile(runtime([amended(7, "3.25")], [usage(7, listed)]), 812, *DAY)
    # then it is matched, with no difference
    assert report["matched"] == 1 and report["quantity_differs"] == []
    assert reconciled(report)


def test_a_usage_listed_at_another_quantity_than_the_key_holds_is_a_difference() -> None:
    # given a record amended to 3.25, and Piriod listing its usage at 2.5 (the quantity
    # before the amend)
    report = reconcile(runtime([amended(7, "3.25")], [usage(7, "2.5")]), 812, *DAY)
    # then it is reported with both quantities, and reconcile is not clean
    assert report["quantity_differs"] == [
        {
            "usage_id": 7,
            "key": "k#v1/usages#pay-2",
            "date_time": "2026-11-01T02:00:00Z",
            "quantity": "3.25",
            "piriod_quantity": "2.5",
        }
    ]
    assert report["matched"] == 0 and not reconciled(report)
    # and the table for a person names it
    out = io.StringIO()
    render_reconcile(report, out)
    [row] = [line for line in out.getvalue().splitlines() if line.startswith("quantity differs")]
    assert " 7 " in row and "2.5 (adapter: 3.25)" in row
    assert "1 at another quantity" in out.getvalue()


def test_a_cancelled_record_is_expected_nowhere() -> None:
    # given a cancelled record (its usage deleted), and Piriod listing nothing
    cancelled = KeyRecord(
        key="k#v1/usages#pay-1",
        status=KeyStatus.CANCELLED,
        usage_id=None,
        date_time="2026-11-01T01:00:00Z",
        quantity="1.10",
        cancelled=True,
    )
    report = reconcile(runtime([cancelled], []), 812, *DAY)
    # then it is counted as cancelled: neither missing nor waiting in a queue
    assert report["missing_in_piriod"] == [] and report["cancelled"] == 1
    assert report["waiting_in_queues"] == 0 and reconciled(report)
