"""The no-loss guarantee under every fault: nothing acknowledged is lost or billed twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from piriod_devkit.faults import SCENARIOS, Lab, Tally, render, restored_environment


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with restored_environment(), Lab(records_per_fault=80) as lab:
        yield lab


@pytest.mark.parametrize("name", [name for name, _ in SCENARIOS])
def test_no_acknowledged_record_is_lost_or_posted_twice(lab: Lab, name: str) -> None:
    # given a fresh deployment and 80 unique records
    lab.reset()
    scenario = dict(SCENARIOS)[name]
    tally = Tally(name)
    # when they are delivered and replayed while the fault is injected, then the fault ends
    deliveries = scenario(lab, tally)
    lab.reconcile(deliveries, tally)
    print(render([tally]))
    # then every acknowledged record is in Piriod once or waiting in a queue
    assert tally.lost == 0 and tally.posted_twice == 0 and tally.unreconciled == 0
    assert tally.acknowledged == 80
    assert tally.posted + tally.queued + tally.rejected == tally.acknowledged
    assert lab.piriod.violations() == []
