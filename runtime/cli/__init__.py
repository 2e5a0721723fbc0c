"""``varrt``: the command line. One verb per job; errors are one line, never a traceback.

Each verb group is a module of this package (``generate``, ``export``, ``measure``, ``inspect``, ``plan``,
``infinity``, ``cache``, ``serve``); ``common`` holds the argument groups and steps they share. Results go to
stdout, progress and errors to stderr (``console``)."""

from __future__ import annotations

import argparse
import sys

from varrt.runtime.cli import cache, export, generate, inspect, measure, plan, serve

DESCRIPTION = "varrt: compiled deployment backend for next-scale-prediction image generators (VAR, Infinity)."


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's (or the machine's) to fix: reported in one line. Anything else is a
    bug and keeps its traceback."""
    from varrt.engines.base import BackendUnavailable, EngineError
    from varrt.engines.trt_config import TrtCompatibilityError
    from varrt.export.exporter import ExportError

    return (ValueError, OSError, EngineError, BackendUnavailable, ExportError, TrtCompatibilityError)


def one_line(e: BaseException, args: argparse.Namespace) -> str:
    """The message of a user error on one line; a failed file operation says what and where."""
    from varrt.runtime.outputs import describe_os_error

    if isinstance(e, OSError) and e.errno is not None:
        where = None
        if not e.filename:  # a write() that failed names no file: say where the command was writing
            from varrt.export.artifact import cache_dir

            where = getattr(args, "out", None) or getattr(args, "out_dir", None) or cache_dir()
        text = describe_os_error(e, where)
    else:
        text = str(e) or type(e).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    from varrt.export.artifact import varrt_version

    p = argparse.ArgumentParser(prog="varrt", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"varrt {varrt_version()}")
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
    cache.add_cache(sub)
    serve.add_serve(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from varrt.runtime import console as con

    args = build_parser().parse_args(argv)
    con.configure_logging(quiet=getattr(args, "quiet", False))
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"varrt {args.command}: error: {one_line(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
