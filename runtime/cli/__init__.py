"""``varrt``: the command line. One verb per job; errors are one line, never a traceback.

Each verb group is a module of this package (``generate``, ``export``, ``measure``, ``inspect``, ``plan``,
``infinity``); ``common`` holds the argument groups and steps they share."""

from __future__ import annotations

import argparse
import sys

from varrt.runtime.cli import export, generate, inspect, measure, plan

DESCRIPTION = "varrt: compiled deployment backend for next-scale-prediction image generators (VAR, Infinity)."


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: reported in one line. Anything else is a bug and keeps its traceback."""
    from varrt.engines.base import BackendUnavailable, EngineError
    from varrt.engines.trt_config import TrtCompatibilityError

    return (ValueError, FileNotFoundError, EngineError, BackendUnavailable, TrtCompatibilityError)


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="varrt", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    generate.add_demo(sub)
    generate.add_generate(sub)
    export.add_export(sub)
    plan.add_plan(sub)
    measure.add_eval(sub)
    measure.add_bench(sub)
    export.add_build(sub)
    inspect.add_inspect(sub)
    inspect.add_doctor(sub)
    inspect.add_compare(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"varrt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
