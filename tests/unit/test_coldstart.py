"""The cyclic garbage collector is held back from a handler's import to the end of the
function's first call, answered or raised (piriod_adapter/coldstart.py). Each case runs in a
new interpreter: the collector's state is the process's own. Also: the modules of value
types and models keep their annotations evaluated (another part of a cold start)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import piriod_adapter
from piriod_adapter.coldstart import HELD_THRESHOLD


def in_new_interpreter(script: str) -> dict[str, Any]:
    """Run `script`, which prints one JSON object as its last line, and return it."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("handler", ["webhook", "replay", "flush", "park"])
def test_held_from_a_handlers_import_to_the_end_of_its_first_call(handler: str) -> None:
    # given a new interpreter that imports a handler, whose work is a probe that notes the
    # collector's thresholds (the handler's own decorators run as deployed)
    seen = in_new_interpreter(
        f"""
        import contextlib, gc, importlib, json
        before = gc.get_threshold()
        module = importlib.import_module("piriod_adapter.handlers.{handler}")
        imported = gc.get_threshold(), gc.get_freeze_count()
        during = []

        class Reply:  # what the webhook's answer() gives back
            status, cause = 404, None
            def to_api_gateway(self):
                return {{"statusCode": 404}}

        def probe(*args, **kwargs):
            during.append(gc.get_threshold())
            return Reply() if "{handler}" == "webhook" else {{}}

        class Span:
            def set(self, **attributes): pass
            def fail(self, why): pass

        class Tracer:
            def invocation(self, *args, **kwargs):
                return contextlib.nullcontext(Span())

        for name in ("answer", "run_replay", "run_flush", "run_park"):
            if hasattr(module, name):
                setattr(module, name, probe)
        module.tracer_of = lambda runtime: Tracer()
        module.get_runtime = lambda: None

        from piriod_devkit.events import LambdaContext

        event = {{"rawPath": "/nowhere", "headers": {{}}, "Records": [],
                 "requestContext": {{"http": {{"method": "GET", "path": "/nowhere"}}}}}}
        # when it is called twice
        module.lambda_handler(event, LambdaContext())
        after_first = gc.get_threshold(), gc.get_freeze_count()
        module.lambda_handler(event, LambdaContext())
        after_second = gc.get_threshold(), gc.get_freeze_count()
        print(json.dumps({{"before": before, "imported": imported, "during": during,
                          "after_first": after_first, "after_second": after_second}}))
        """
    )
    # then the import held the young generation's threshold back, and froze nothing
    before = seen["before"]
    held = [HELD_THRESHOLD, before[1], before[2]]
    assert seen["imported"] == [held, 0]
    # and it stayed held through the first call, which, once done, froze what the cold
    # start made and put the thresholds back; the second call ran with them
    assert seen["during"] == [held, before]
    thresholds, frozen = seen["after_first"]
    assert thresholds == before
    assert frozen > 10_000
    # and the second call froze nothing more (frozen objects freed since lower the count)
    thresholds, frozen_later = seen["after_second"]
    assert thresholds == before
    assert frozen_later <= frozen


def test_released_when_the_first_call_raises() -> None:
    # given a held collector, when the handler's first call raises
    seen = in_new_interpreter(
        """
        import gc, json
        from piriod_adapter import coldstart
        before = gc.get_threshold()
        coldstart.hold()
        held = gc.get_threshold()

        @coldstart.releases_after_call
        def handler(event, context):
            raise RuntimeError("store down")

        try:
            handler({}, None)
        except RuntimeError as exc:
            raised = str(exc)
        print(json.dumps({"before": before, "held": held, "raised": raised,
                          "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
        """
    )
    # then the error reaches the caller, and the collector is released all the same
    assert seen["held"][0] == HELD_THRESHOLD
    assert seen["raised"] == "store down"
    assert seen["after"] == seen["before"]
    assert seen["frozen"] > 0


@pytest.mark.parametrize(
    ("given", "expected"), [(None, "__all__"), ("", ""), ("logfire", "logfire")]
)
def test_a_handlers_import_tells_pydantic_not_to_search_for_plugins(
    given: str | None, expected: str
) -> None:
    # given a new interpreter whose environment has PYDANTIC_DISABLE_PLUGINS as `given`
    setting = "" if given is None else f"os.environ['PYDANTIC_DISABLE_PLUGINS'] = {given!r}"
    # when it imports a handler
    seen = in_new_interpreter(
        f"""
        import json, os
        os.environ.pop("PYDANTIC_DISABLE_PLUGINS", None)
        {setting}
        import piriod_adapter.handlers.webhook
        print(json.dumps({{"value": os.environ.get("PYDANTIC_DISABLE_PLUGINS")}}))
        """
    )
    # then pydantic's search is off unless the environment said otherwise
    assert seen["value"] == expected


def test_modules_of_value_types_and_models_evaluate_their_annotations() -> None:
    # given every module of the adapter
    package = Path(piriod_adapter.__file__).parent
    postponed = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        bases = {
            base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            for base in node.bases
        }
        future = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "__future__"
            and any(alias.name == "annotations" for alias in node.names)
            for node in tree.body
        )
        # when one defines a NamedTuple or a pydantic model and postpones its annotations
        if bases & {"NamedTuple", "BaseModel"} and future:
            postponed.append(str(path.relative_to(package)))
    # then none does: typing and pydantic would compile each field's annotation string at
    # import, a cold start's time (docs/benchmarks.md, "Where a cold start goes")
    assert postponed == []
