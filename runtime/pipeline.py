"""A model loaded once, ready to generate: the Python entry point for embedding varrt.

    from varrt.runtime.pipeline import Pipeline

    pipe = Pipeline.demo()                                     # bundled demo model, ONNX Runtime, CPU
    result = pipe.generate([1, 4], seed=0, policy="full")      # class ids; Infinity: prompts=[...]
    result.images                                              # (B, 3, H, W) float in [0, 1]

    pipe = Pipeline.from_checkpoints("var_d16.pth", "vae_ch160v4096z32.pth",
                                     policies=("full", "fastvar"), batch=2)
    pipe = Pipeline.from_artifact("d16/", backend="trt")       # a `varrt export` directory

A pipeline holds one engine (sessions, TensorRT contexts or torch modules), loaded when the
pipeline is made and reused by every call, so a server pays for loading once. Everything a call
varies is an argument of :meth:`Pipeline.generate`: the inputs, the seed, the policy (by spec,
made once per spec and kept) and the sampling. A call's images depend only on its own arguments:
it draws from its own generator seeded from its ``seed``, never from a global one.

Compiled backends run only what was exported: ``policies`` and ``batch`` of :meth:`from_weights`
name the plans and the batch size the artifact is built for (a call outside them gets an
:class:`~varrt.engines.base.EngineError` naming the missing graph); ``torch`` runs anything.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from varrt.engines.base import BackendUnavailable
from varrt.export.exporter import ExportConfig
from varrt.export.infinity_config import InfinitySchedule
from varrt.runtime.bitwise import BitwiseSampling
from varrt.runtime.generate import Generation, ScaleCallback
from varrt.runtime.infinity_generate import TextGeneration
from varrt.runtime.plan import spec_identity
from varrt.runtime.policies import Policy
from varrt.runtime.sampling import SamplingConfig
from varrt.runtime.weights import INFINITY_SAMPLING, OFFICIAL_SAMPLING, Weights

BACKENDS = ("ort", "torch", "trt", "torch-graph")
Say = Callable[[str], None]


#: where the library reports its steps (export, loading) unless a caller passes its own ``say``
_log = logging.getLogger("varrt.pipeline").info


@dataclass(frozen=True)
class ExportOptions:
    """How the ort / trt backends get their artifact: reused from the cache by content hash, or
    exported (into ``out`` when given) and validated against torch."""

    config: ExportConfig = field(default_factory=ExportConfig)
    out: Path | None = None
    force: bool = False  # replace an artifact in ``out`` that holds another export
    validate: bool = True


@dataclass(frozen=True)
class PromptShape:
    """What an Infinity artifact is built for besides the batch: the schedule (aspect ratio and
    size), the padded prompt length in T5 tokens, and whether negative prompts are encoded."""

    schedule: InfinitySchedule
    text_length: int
    negative: bool = False


# ------------------------------------------------------------------------------------------ engines
def export_for(
    weights: Weights,
    policies: Sequence[str],
    batch: int,
    export: ExportOptions = ExportOptions(),
    prompts: PromptShape | None = None,
    say: Say = _log,
    buckets: bool = False,
) -> Path:
    """The artifact of ``weights`` for these policies and batch (with ``buckets``: and every batch
    bucket below it, see ``plan.group_sizes``): reused when its key matches, else exported."""
    if weights.family == "var":
        from varrt.runtime.artifacts import ExportRequest, ensure_artifact

        request = ExportRequest(
            source=weights.source(), policies=tuple(policies), batch=batch, config=export.config, buckets=buckets
        )
        return ensure_artifact(
            request, weights.load, out=export.out, force=export.force, validate=export.validate, say=say
        )
    from varrt.runtime.infinity_artifacts import InfinityExportRequest, ensure_infinity_artifact

    if prompts is None:
        raise ValueError("an Infinity export needs its prompt shape (schedule, text length, negative prompts)")
    request = InfinityExportRequest(
        source=weights.source(),
        policies=tuple(policies),
        batch=batch,
        schedule=prompts.schedule,
        text_length=prompts.text_length,
        negative=prompts.negative,
        config=export.config,
        buckets=buckets,
    )
    return ensure_infinity_artifact(
        request, weights.load, out=export.out, force=export.force, validate=export.validate, say=say
    )


def artifact_engine(
    artifact: str | Path,
    backend: str = "ort",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    say: Say = _log,
    tf32: bool = True,
):
    """The compiled engine of an export directory: ONNX Runtime sessions or TensorRT engines
    (built on first use, cached; ``tf32``: TF32 for fp32 math, TensorRT's default)."""
    if backend == "trt":
        from varrt.engines.tensorrt_engine import TrtEngine
        from varrt.engines.trt_config import BuildConfig

        return TrtEngine(artifact, BuildConfig(tf32=tf32), say=say)
    if backend != "ort":
        raise ValueError(f"an export artifact runs on the ort or trt backend, not {backend!r}")
    from varrt.engines.ort_engine import OrtEngine

    return OrtEngine(artifact, providers=list(providers), threads=threads)


def check_backend(backend: str, family: str = "var", providers: Sequence[str] = ()) -> None:
    """The cheap part of making an engine, before any export or model loading: a known backend
    that this machine and family can run (ort: with these execution providers), or one line
    saying what is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if backend == "trt":
        from varrt.engines.tensorrt_engine import import_tensorrt

        import_tensorrt()
    elif backend == "torch-graph" and not torch.cuda.is_available():
        raise BackendUnavailable(
            "torch-graph needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
            "see README, 'On an NVIDIA GPU', and `varrt doctor`"
        )
    elif backend == "ort":
        from varrt.engines.ort_engine import _import_ort

        have = _import_ort().get_available_providers()
        missing = [p for p in providers if p not in have]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime provider(s) {missing} are not in this onnxruntime build (it has {have}); "
                "for CUDA install onnxruntime-gpu instead of onnxruntime"
            )


def build_engine(
    weights: Weights,
    backend: str = "ort",
    *,
    policies: Sequence[str] = ("full",),
    batch: int = 1,
    export: ExportOptions = ExportOptions(),
    prompts: PromptShape | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    compile: bool = False,
    tf32: bool = True,
    say: Say = _log,
    buckets: bool = False,
):
    """The engine for ``weights`` on ``backend``; cheap checks (files, backend) come first.
    ``compile``: torch-graph compiles every graph first; ``tf32``: trt builds with TF32."""
    weights.check()
    check_backend(backend, weights.family, providers)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if backend in ("torch", "torch-graph") and weights.family == "infinity":
        # as on VAR: the precision an export of it computes at
        from varrt.export.infinity_exporter import precision_model

        say("loading the torch models")
        model, vae, text_encoder = weights.load()
        model = precision_model(model, export.config.precision)
        if backend == "torch":
            from varrt.engines.torch_engine import InfinityTorchEngine

            return InfinityTorchEngine(model, vae, text_encoder)
        from varrt.engines.torch_graph_engine import InfinityTorchGraphEngine

        return InfinityTorchGraphEngine(model, vae, text_encoder, compile=compile)
    if backend in ("torch", "torch-graph"):
        # the eager backends compute at the export precision, as an export of it does (so torch and
        # torch-graph are compared at the same precision)
        from varrt.export.exporter import precision_models

        say("loading the torch models")
        var, vqvae = precision_models(*weights.load(), export.config.precision)
        if backend == "torch":
            from varrt.engines.torch_engine import TorchEngine

            return TorchEngine(var, vqvae)
        from varrt.engines.torch_graph_engine import TorchGraphEngine

        return TorchGraphEngine(var, vqvae, compile=compile)
    artifact = export_for(weights, policies, batch, export, prompts, say, buckets)
    return artifact_engine(artifact, backend, providers, threads, say, tf32)


def sampling_config(
    family: str,
    defaults: Mapping[str, float],
    overrides: SamplingConfig | BitwiseSampling | Mapping[str, float | None] | None = None,
) -> SamplingConfig | BitwiseSampling:
    """A family's sampling config: ``overrides`` as given (a config), or merged over ``defaults``
    (a mapping; None values keep the default). Unknown or invalid settings are ValueErrors."""
    kind = SamplingConfig if family == "var" else BitwiseSampling
    if isinstance(overrides, SamplingConfig | BitwiseSampling):
        if not isinstance(overrides, kind):
            raise ValueError(f"a {family} model samples with {kind.__name__}, got {type(overrides).__name__}")
        return overrides
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(given) - set(kind.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"sampling settings {sorted(unknown)} do not apply to a {family} model; "
            f"it takes {', '.join(kind.__dataclass_fields__)}"
        )
    merged = {**defaults, **given}
    return kind(**{k: v for k, v in merged.items() if k in kind.__dataclass_fields__})


# ------------------------------------------------------------------------------------------ pipeline
class Pipeline:
    """An engine and what generating with it needs (tokenizer, schedule, sampling defaults, the
    policies made so far).

    Thread-safety: one generation at a time per pipeline. :meth:`generate` holds the pipeline's
    lock for the whole call, because an engine reuses its buffers (KV cache, TensorRT bindings)
    and policies keep per-generation state; concurrent callers queue. For parallel generations,
    make one pipeline per worker (each loads its own engine).
    """

    def __init__(
        self,
        engine,
        *,
        weights: Weights | None = None,
        tokenizer=None,
        sampling_defaults: Mapping[str, float] | None = None,
        schedule: InfinitySchedule | None = None,
        text_length: int | None = None,
        classes: Sequence[str] = (),
    ) -> None:
        self.engine = engine
        self.family = "var" if getattr(engine, "var_config", None) is not None else "infinity"
        self.weights = weights
        base = OFFICIAL_SAMPLING if self.family == "var" else INFINITY_SAMPLING
        if sampling_defaults is None:
            sampling_defaults = weights.sampling_defaults if weights else base
        self.sampling_defaults = {**base, **sampling_defaults}
        self.classes = tuple(classes)
        self.tokenizer = tokenizer
        self.schedule = schedule or getattr(engine, "schedule", None)
        self.text_length = text_length
        if self.family == "infinity":
            if tokenizer is None:
                raise ValueError("an Infinity pipeline needs the text encoder's tokenizer")
            self.schedule = self.schedule or InfinitySchedule.for_ratio(1.0, "1M")
        self._policies: dict[str, Policy] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_weights(cls, weights: Weights, backend: str = "ort", **options) -> Pipeline:
        """Load ``weights`` on ``backend`` (ort / trt: export once for the ``policies`` x ``batch``
        options, reused from the cache by hash; Infinity's export is also shaped by ``prompts``).
        ``options`` are :func:`build_engine`'s keywords (policies, batch, export, prompts,
        providers, threads, compile, tf32, say, buckets); with ``buckets`` the export also holds
        every batch bucket below ``batch`` (1, 2, 4, ...): what a server that pads its batches to
        buckets runs."""
        tokenizer = weights.check().tokenizer() if weights.family == "infinity" else None
        engine = build_engine(weights, backend, **options)
        classes = _demo_classes() if weights.demo else ()
        prompts: PromptShape | None = options.get("prompts")
        schedule, length = (prompts.schedule, prompts.text_length) if prompts else (None, None)
        return cls(engine, weights=weights, tokenizer=tokenizer, schedule=schedule, text_length=length, classes=classes)

    @classmethod
    def from_checkpoints(
        cls, checkpoint: str | Path, vae: str | Path, *, text_encoder: str | Path | None = None, **options
    ) -> Pipeline:
        """Official (or your own) checkpoint files; with ``text_encoder``, an Infinity model.
        ``options`` are :meth:`from_weights`'s."""
        return cls.from_weights(Weights.files(checkpoint, vae, text_encoder), **options)

    @classmethod
    def demo(cls, **options) -> Pipeline:
        """The bundled demo model (class i = the i-th training emoji in ``pipe.classes``)."""
        return cls.from_weights(Weights.demo_model(), **options)

    @classmethod
    def from_artifact(
        cls,
        artifact: str | Path,
        backend: str = "ort",
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        text_encoder: str | Path | None = None,
        tf32: bool = True,
        say: Say = _log,
    ) -> Pipeline:
        """An export directory, without its checkpoints. Its sampling defaults are those of the
        weights it was exported from (the demo model's own, else official). Infinity needs the
        tokenizer: ``text_encoder`` (default: the folder the artifact was exported from)."""
        from varrt.export.artifact import read_manifest
        from varrt.export.text_encoder import load_text_encoder

        if backend not in ("ort", "trt"):
            raise ValueError(f"an export artifact runs on the ort or trt backend, not {backend!r}")
        check_backend(backend, providers=providers)
        manifest = read_manifest(artifact)
        weights = Weights.of_source(manifest.source, manifest.family)
        tokenizer, text_length = None, None
        if manifest.family == "infinity":
            folder = text_encoder or (weights.text_encoder if weights else None)
            if folder is None:
                raise ValueError(f"{artifact} is an Infinity artifact: give its text encoder folder (the tokenizer)")
            tokenizer = load_text_encoder(folder, load_model=False)
            text_length = manifest.request.get("text_length")
        engine = artifact_engine(artifact, backend, providers, threads, say, tf32)
        classes = _demo_classes() if weights and weights.demo else ()
        defaults = weights.sampling_defaults if weights else None
        return cls(
            engine, weights=weights, tokenizer=tokenizer, sampling_defaults=defaults, text_length=text_length,
            classes=classes,
        )  # fmt: skip

    # ------------------------------------------------------------------------------- what it is
    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def label(self) -> str:
        """The model's name (e.g. ``var-d16``, ``infinity-2b``)."""
        if self.family == "var":
            return self.engine.var_config.label
        return self.engine.config.name or "infinity"

    @property
    def num_scales(self) -> int:
        return self.engine.var_config.schedule.num_scales if self.family == "var" else self.schedule.num_scales

    def grid(self, si: int) -> tuple[int, int]:
        sched = self.engine.var_config.schedule if self.family == "var" else self.schedule
        return tuple(sched.grids[si])

    def policy(self, spec: str | Policy) -> Policy:
        """The policy for ``spec`` (``full``, ``fastvar:keep=...``, ``A+B``, a plan file), made once
        per spec (a plan file: per content) and kept."""
        if isinstance(spec, Policy):
            return spec
        key = json.dumps(spec_identity(spec), sort_keys=True)
        if key not in self._policies:
            if self.family == "var":
                from varrt.runtime.policies import make_policy

                self._policies[key] = make_policy(spec, self.engine.var_config)
            else:
                from varrt.runtime.policies.infinity import make_infinity_policy

                self._policies[key] = make_infinity_policy(spec, self.schedule, self.engine.config.depth)
        return self._policies[key]

    @property
    def sampling_origin(self) -> str:
        """Where the sampling defaults come from, in words (reports say which settings ran)."""
        if self.weights is not None:
            return self.weights.sampling_origin
        return "the official sampler's (the weights this engine came from are not known)"

    def sampling(
        self, overrides: SamplingConfig | BitwiseSampling | Mapping[str, float | None] | None = None
    ) -> SamplingConfig | BitwiseSampling:
        """The sampling a call runs: a config as given, or the defaults with ``overrides`` (None = default)."""
        return sampling_config(self.family, self.sampling_defaults, overrides)

    # ------------------------------------------------------------------------------- generating
    def generate(
        self,
        labels: Sequence[int] | None = None,
        *,
        prompts: Sequence[str] | str | None = None,
        seed: int | Sequence[int] = 0,
        policy: str | Policy = "full",
        sampling: SamplingConfig | BitwiseSampling | Mapping[str, float | None] | None = None,
        batch: int | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        on_scale: ScaleCallback | None = None,
    ) -> Generation | TextGeneration:
        """Generate one image per class label (VAR; or ``batch`` random classes) or per prompt
        (Infinity). Returns the images ((B, 3, H, W) in [0, 1] on the CPU) with the details: the
        plan each sample finished on, the policy's decisions, per-scale and per-stage seconds.

        ``seed``: one int seeds one generator for the batch (the official sampler's stream), one
        per sample (a list) gives each sample its own generator, so that its image is the one it
        would get alone with that seed, whatever else is in the batch (what a server needs), up to
        the engine's float rounding at another batch position, which can tip a top-p knife-edge
        draw (docs/serving.md)."""
        for s in [seed] if isinstance(seed, int) else seed:
            check_seed(s)
        with self._lock:
            chosen = self.policy(policy)
            config = self.sampling(sampling)
            if self.family == "var":
                from varrt.runtime.generate import generate

                if prompts is not None or negative_prompt is not None:
                    raise ValueError(f"{self.label} is class-conditional: give class labels, not prompts")
                return generate(
                    self.engine, labels, batch=batch, seed=seed, sampling=config, policy=chosen, on_scale=on_scale
                )
            from varrt.runtime.infinity_generate import generate_infinity

            if labels is not None:
                raise ValueError(f"{self.label} is text-to-image: give prompts, not class labels")
            prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
            self.check_prompt_length(prompts, negative_prompt)
            return generate_infinity(
                self.engine,
                self.tokenizer,
                prompts,
                negative_prompt=negative_prompt,
                seed=seed,
                sampling=config,
                policy=chosen,
                schedule=self.schedule,
                text_length=self.text_length,
                on_scale=on_scale,
            )

    def check_prompt_length(self, prompts: list[str], negative: str | Sequence[str] | None = None) -> None:
        """Prompts that fit the text length the pipeline's artifact was exported for (else a ValueError)."""
        if self.text_length is None or not prompts:
            return
        texts = prompts + ([negative] if isinstance(negative, str) else list(negative or []))
        _, mask = self.tokenizer.tokenize(texts, 512)
        longest = int(mask.sum(1).max())
        if longest > self.text_length:
            raise ValueError(
                f"a prompt has {longest} T5 tokens, more than this pipeline's text length {self.text_length}"
            )


def check_seed(seed) -> int:
    """A generation seed: an integer >= 0 (a bool is not one)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def _demo_classes() -> tuple[str, ...]:
    from varrt.runtime.demo import demo_model

    return demo_model().classes
