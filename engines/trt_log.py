"""TensorRT's log, kept: every message of a build for ``build.log``, and the last warnings and
errors quoted in every :class:`~varrt.engines.base.EngineError` (TensorRT says why a build,
a deserialisation or an enqueue failed only there; a bool or a None carries no reason).

The keeping is plain Python (tested without TensorRT); :func:`make_logger` wraps it in a
``trt.ILogger`` for the builder, the parser and the runtime.
"""

from __future__ import annotations

from collections import deque

from varrt.engines.base import EngineError

#: TensorRT's severities, most severe first (``trt.ILogger.Severity`` names)
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


class TrtLog:
    """Messages at ``min_severity`` or worse; all of them (a build) or the last ``tail`` ones."""

    def __init__(self, min_severity: str = "WARNING", keep_all: bool = False, tail: int = 50) -> None:
        if min_severity not in SEVERITIES:
            raise ValueError(f"severity {min_severity!r} is not one of {SEVERITIES}")
        self.level = SEVERITIES.index(min_severity)
        self.messages: deque[tuple[str, str]] = deque(maxlen=None if keep_all else tail)

    def add(self, severity: str, msg: str) -> None:
        if SEVERITIES.index(severity) <= self.level:  # VERBOSE floods; filter before keeping
            self.messages.append((severity, msg.strip()))

    def text(self) -> str:
        return "\n".join(f"[{s}] {m}" for s, m in self.messages)

    def last(self, n: int = 3, worst: str = "WARNING") -> list[str]:
        """The last ``n`` messages at ``worst`` or more severe, oldest first."""
        level = SEVERITIES.index(worst)
        return [f"[{s}] {m}" for s, m in self.messages if SEVERITIES.index(s) <= level][-n:]

    def quote(self, n: int = 3) -> str:
        """' TensorRT said: ...' with its last errors (else warnings), or '' when it said nothing."""
        said = self.last(n, "ERROR") or self.last(n, "WARNING")
        return f" TensorRT said: {' | '.join(said)}" if said else ""

    def error(self, msg: str) -> EngineError:
        """An EngineError whose message ends with what TensorRT said last."""
        return EngineError(msg.rstrip() + self.quote())


def make_logger(trt, log: TrtLog):
    """A ``trt.ILogger`` writing into ``log``."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg: str) -> None:
            log.add(getattr(severity, "name", str(severity)).split(".")[-1], msg)

    return Logger()
