"""How a server process (or each Ray replica) makes its service: a picklable recipe, not a pipeline.

A Ray replica runs in another process, maybe on another machine: it gets this recipe and loads its
own engine there (on its own GPU). The command line builds the same recipe for Triton.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from varrt.runtime.serve.batching import ImageService
from varrt.runtime.weights import Weights

#: the largest batch a server exports for when not told (buckets 1, 2, 4): on CPUs larger batches
#: add latency and little throughput; GPU servers pass --max-batch 8 or more
DEFAULT_BATCH = 4


@dataclass(frozen=True)
class ServiceSpec:
    """An export directory (``artifact``) or weights to export for the server's buckets."""

    artifact: Path | None = None
    weights: Weights | None = None  # None with no artifact: the bundled demo model
    backend: str = "ort"
    policies: tuple[str, ...] = ("full",)
    max_batch: int | None = None  # default: the artifact's batch; DEFAULT_BATCH when exporting
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int | None = None
    text_encoder: Path | None = None  # Infinity artifacts: the tokenizer's folder
    warm_up: bool = True

    def check(self) -> ServiceSpec:
        """The cheap checks, before anything is loaded or exported."""
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {self.max_batch}")
        if not self.policies:
            raise ValueError("serve at least one policy")
        if self.weights is not None and self.weights.family == "infinity" and self.backend in ("ort", "trt"):
            raise ValueError(
                "serve a compiled Infinity model from its export directory (--artifact; the batch it was "
                "exported for is the server's bucket), or run it on --backend torch"
            )
        if self.artifact is not None:
            if self.weights is not None:
                raise ValueError("--artifact and the model options exclude each other")
            if not (Path(self.artifact) / "manifest.json").is_file():
                raise ValueError(f"{self.artifact} is not an export directory (no manifest.json); run `varrt export`")
        return self

    @property
    def batch(self) -> int:
        """The largest batch the service will run (known before loading: the artifact's manifest)."""
        if self.artifact is not None and self.max_batch is None:
            from varrt.export.artifact import read_manifest

            return read_manifest(self.artifact).batch
        return self.max_batch or DEFAULT_BATCH

    def build(self, say: Callable[[str], None] = lambda _m: None) -> ImageService:
        """Load (or export, then load) the engine once and wrap it in a service; warm it up."""
        from varrt.runtime.pipeline import Pipeline

        self.check()
        if self.artifact is not None:
            pipe = Pipeline.from_artifact(
                self.artifact,
                self.backend,
                providers=self.providers,
                threads=self.threads,
                text_encoder=self.text_encoder,
                say=say,
            )
        else:
            pipe = Pipeline.from_weights(
                self.weights or Weights.demo_model(),
                self.backend,
                policies=self.policies,
                batch=self.batch,
                buckets=True,
                providers=self.providers,
                threads=self.threads,
                say=say,
            )
        service = ImageService(pipe, self.policies, self.batch)
        if self.warm_up:
            service.warm_up(say)
        return service
