"""`piriod-local`: run the adapter locally, serve the stand-ins, sign sample events. It runs
from a checkout of the project, with the dev kit installed there (`pip install -e ".[local]"`):
it reads the checkout's template.yaml, events/ and examples/."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _sign(args: argparse.Namespace) -> int:
    from piriod_devkit.events import load_event, sign_event, sign_samples

    if args.samples:
        for path in sign_samples():
            sys.stdout.write(f"signed {path.name}\n")
        return 0
    if args.event is None:
        sys.stderr.write("piriod-local sign: give an event file, or --samples\n")
        return 2
    event = sign_event(load_event(args.event), args.secret)
    text = json.dumps(event, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# The import names of the `local` extra (pyproject.toml) and of moto[server]'s own: the dev
# kit's dependencies, which a plain `pip install .` does not bring.
LOCAL_EXTRA = frozenset({"moto", "yaml", "jsonschema", "flask", "flask_cors", "werkzeug"})
NEEDS_LOCAL = (
    "piriod-local runs from a checkout of piriod-usage-adapter, with the dev kit installed "
    'there: `pip install -e ".[local]"` (`pipx install .` installs piriod-adapter only)'
)


def main(argv: list[str] | None = None) -> int:
    from piriod_devkit.checkout import NotACheckout
    from piriod_operator.errors import closed_pipe

    try:
        try:
            code = _main(argv)
        except SystemExit:  # --help, --version, an argument error: what they wrote goes out
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `piriod-local demo | head`: the reader has all it wanted
        return closed_pipe(sys.stdout)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in LOCAL_EXTRA:
            raise
        sys.stderr.write(NEEDS_LOCAL + "\n")
        return 2
    except NotACheckout as exc:  # installed on its own, or run outside a checkout
        sys.stderr.write(f"{exc}\n")
        return 2
    except OSError as exc:  # a file given that is not there or cannot be read: not a defect
        if exc.filename is None:
            raise
        sys.stderr.write(f"piriod-local: {exc.filename}: {exc.strerror or exc}\n")
        return 2


class _Parser(argparse.ArgumentParser):
    def _print_message(self, message: str, file: Any = None) -> None:
        """As argparse's, without its silence on a failed write (a closed pipe)."""
        if message:
            (file or sys.stderr).write(message)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("piriod-usage-adapter")
    except PackageNotFoundError:  # pragma: no cover (run from a checkout without install)
        return "unknown"


def _main(argv: list[str] | None) -> int:
    from piriod_devkit import demo
    from piriod_devkit import serve as local_serve

    parser = _Parser(prog="piriod-local", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run the whole adapter locally and show it work")
    demo.add_arguments(demo_parser)
    serve_parser = commands.add_parser(
        "serve",
        help="keep the adapter running locally (webhook, AWS and Piriod stand-ins) until Ctrl-C",
        description=local_serve.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    local_serve.add_arguments(serve_parser)
    faults = commands.add_parser("faults", help="run the fault suite and print its table")
    faults.add_argument("--records-per-fault", type=int, default=80)
    standins = commands.add_parser(
        "standins", help="serve moto and the Piriod stand-in where env/local.json expects them"
    )
    standins.add_argument("--gateway", help="Docker bridge gateway to serve containers on")
    sign = commands.add_parser("sign", help="sign an API Gateway event file for sam local invoke")
    sign.add_argument("event", nargs="?", help="a file in events/ (name or path)")
    sign.add_argument(
        "--samples",
        action="store_true",
        help="sign every sample in events/ again, in place, at the time env/local.json names "
        "(after editing one; `sam local invoke -e events/<file>.json` then works as is)",
    )
    sign.add_argument(
        "--secret",
        help="signing secret (default: the local one; for a source's event, the local secret "
        "of its profile in examples/sources.json)",
    )
    sign.add_argument("-o", "--output", help="write here instead of standard output")
    openapi = commands.add_parser(
        "openapi", help="write openapi.yaml (the sender's contract) from the models"
    )
    openapi.add_argument("-o", "--output", help="write here instead of openapi.yaml")
    openapi.add_argument(
        "--check", action="store_true", help="fail when the file is not what the models say"
    )
    args = parser.parse_args(argv)
    if not (args.command == "serve" and (args.print_env or args.unset)):
        from piriod_devkit import checkout

        checkout.root()  # every other command reads the checkout: none is one line, first
    if args.command == "demo":
        return demo.run(args)
    if args.command == "serve":
        return local_serve.run(args)
    if args.command == "standins":
        from piriod_devkit.standins import serve

        return serve(args.gateway)
    if args.command == "openapi":
        from piriod_devkit import openapi as contract

        return contract.main(args.output, args.check)
    if args.command == "faults":
        from piriod_devkit import faults as suite

        return suite.main(args.records_per_fault)
    return _sign(args)


if __name__ == "__main__":
    raise SystemExit(main())
