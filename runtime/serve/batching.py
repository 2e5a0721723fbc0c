"""What both servers share: requests, their checks, batches grouped by plan and padded to buckets.

A server hands :meth:`ImageService.serve` whatever requests its batcher collected (Triton's dynamic
batcher, Ray Serve's ``@serve.batch``). The service

1. checks each request cheaply (class id, prompt length, seed, policy, sampling), so a bad request
   gets its one-line error without costing, or failing, anyone else's generation;
2. groups the valid ones by what fixes the engine's shapes and the sampler's settings: the policy
   spec and the resolved sampling config (a request that leaves ``cfg`` out and one that sends the
   default land in the same group);
3. runs each group (at most ``max_batch`` requests at a time) as one generation, padded with dummy
   rows up to the smallest exported bucket (``plan.group_sizes``: 1, ..., B // 2, B for a largest batch B), so
   the engine only ever sees shapes it was built for;
4. seeds every row with its own generator (``Pipeline.generate(seed=[...])``), so a request's
   image is the one it gets alone, whatever else shares its batch (up to the engine's float
   rounding, which can tip a top-p knife-edge draw: docs/serving.md).

Dummy rows repeat the group's first request: valid inputs by construction, and thrown away.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from varrt.runtime.images import to_uint8
from varrt.runtime.plan import bucket_of, group_sizes

#: sampling settings a request may set (the rest come from the model's defaults)
SAMPLING_FIELDS = ("cfg", "top_k", "top_p", "tau")


class RequestError(ValueError):
    """A request the service cannot serve; the message names the field and the fix, in one line."""


@dataclass(frozen=True)
class GenerationRequest:
    """One image: a class id (VAR) or a prompt (Infinity), its seed, policy and sampling."""

    class_id: int | None = None
    prompt: str | None = None
    seed: int = 0
    policy: str = "full"
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    tau: float | None = None

    def sampling_overrides(self) -> dict:
        return {k: getattr(self, k) for k in SAMPLING_FIELDS if getattr(self, k) is not None}


@dataclass(frozen=True)
class Served:
    """A generated image and the engine call it came from."""

    image: np.ndarray  # (H, W, 3) uint8
    batch: int  # requests in that call (its group)
    bucket: int  # the batch size it ran at (batch + dummy rows)


@dataclass
class ServiceStats:
    """What the service did so far: formed batch sizes (requests per engine call) and buckets."""

    batches: Counter = field(default_factory=Counter)
    buckets: Counter = field(default_factory=Counter)
    served: int = 0
    rejected: int = 0
    failed: int = 0
    busy_seconds: float = 0.0
    in_flight: int = 0  # requests inside serve() now (a drain waits for them)

    def to_dict(self) -> dict:
        return {
            "batch_sizes": {str(k): v for k, v in sorted(self.batches.items())},
            "buckets": {str(k): v for k, v in sorted(self.buckets.items())},
            "served": self.served,
            "rejected": self.rejected,
            "failed": self.failed,
            "busy_seconds": round(self.busy_seconds, 3),
        }


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two uint8 images of one request are the same image as the service promises it: the
    same tokens (per-request generators), decoded at different batch sizes, so float rounding may
    move a few values by one level (every value within 1, at most 1% of them off). Run at the same
    bucket, a request's image is the same bytes. False also for a knife-edge draw (a top-p cut the
    engine's rounding tips: docs/serving.md); tools/batch_invariance.py tells the two apart."""
    if a.shape != b.shape:
        return False
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(diff.max(initial=0)) <= 1 and float((diff > 0).mean()) <= 0.01


def served_buckets(pipe, max_batch: int) -> tuple[int, ...]:
    """The buckets up to ``max_batch`` the pipeline's engine can run: all of them for the torch
    backends; for compiled ones, those whose conditioner and decoder were exported (the policies'
    step graphs are checked by :meth:`ImageService.warm_up`)."""
    wanted = group_sizes(max_batch)
    if pipe.backend in ("torch", "torch-graph"):
        return wanted
    engine = pipe.engine
    if pipe.family == "var":
        from varrt.export.graphs import conditioner_spec, decoder_spec

        specs = lambda b: (conditioner_spec(engine.var_config, 2 * b), decoder_spec(engine.vqvae_config, b))  # noqa: E731
    else:
        from varrt.export.infinity_graphs import infinity_conditioner_spec, infinity_decoder_spec
        from varrt.runtime.bitwise import vae_grid

        grid = vae_grid(pipe.schedule.last, engine.config.patchify)
        specs = lambda b: (  # noqa: E731
            infinity_conditioner_spec(engine.config, 2 * b, pipe.text_length, engine.precision),
            infinity_decoder_spec(engine.vae_config, b, grid),
        )
    have = tuple(b for b in wanted if all(engine.has_graph(s) for s in specs(b)))
    if not have:
        raise RequestError(
            f"the {pipe.backend} engine has no graphs for any batch of 1..{max_batch} (its buckets "
            f"{wanted}); export with `--batch {max_batch}` for the server, or lower --max-batch"
        )
    return have


class ImageService:
    """A pipeline behind a server: checks requests, groups them by plan, pads them to buckets.

    One engine call at a time (the pipeline's lock); a server with several engines (GPUs) runs one
    service per engine (a Ray replica, a Triton model instance).
    """

    def __init__(
        self, pipe, policies: Sequence[str] = ("full",), max_batch: int | None = None, buckets: Sequence[int] = ()
    ) -> None:
        self.pipe = pipe
        self.policies = tuple(policies)
        if not self.policies:
            raise ValueError("a service serves at least one policy")
        manifest = getattr(pipe.engine, "manifest", None)
        self.max_batch = max_batch or (manifest.batch if manifest is not None else 1)
        self.buckets = tuple(sorted(buckets)) or served_buckets(pipe, self.max_batch)
        self.max_batch = max(self.buckets)
        # a request's spec, or the policy's own name when only one spec has it
        names = Counter(pipe.policy(s).name for s in self.policies)
        self._specs = {s: s for s in self.policies}
        for s in self.policies:
            name = pipe.policy(s).name
            if names[name] == 1:
                self._specs.setdefault(name, s)
        if pipe.family == "infinity" and pipe.text_length is None:
            # one padded prompt length for every batch: a prompt's encoding must not depend on its batch
            pipe.text_length = pipe.engine.config.text_maxlen
        self.stats = ServiceStats()
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------------------- what it serves
    def describe(self) -> dict:
        return {
            "model": self.pipe.label,
            "family": self.pipe.family,
            "backend": self.pipe.backend,
            "policies": list(self.policies),
            "buckets": list(self.buckets),
            "max_batch": self.max_batch,
            "classes": list(self.pipe.classes),
            "sampling_defaults": dict(self.pipe.sampling_defaults),
        }

    # ------------------------------------------------------------------------------- checks
    def check(self, req: GenerationRequest) -> tuple[str, object]:
        """The request's group key (policy spec, sampling config), or a :class:`RequestError`."""
        from varrt.runtime.pipeline import check_seed

        pipe = self.pipe
        try:
            check_seed(req.seed)
            if pipe.family == "var":
                if req.prompt is not None or req.class_id is None:
                    raise RequestError(f"{pipe.label} is class-conditional: send a class_id (and no prompt)")
                from varrt.runtime.generate import resolve_labels

                cfg = pipe.engine.var_config
                resolve_labels([req.class_id], None, cfg.num_classes, None, pipe.engine.device)
            else:
                if req.class_id is not None or not req.prompt:
                    raise RequestError(f"{pipe.label} is text-to-image: send a non-empty prompt (and no class_id)")
                pipe.check_prompt_length([req.prompt])
            spec = self._specs.get(req.policy)
            if spec is None:
                raise RequestError(
                    f"unknown policy {req.policy!r}: this server serves {', '.join(self.policies)} "
                    "(start it with --policy for another)"
                )
            return spec, pipe.sampling(req.sampling_overrides())
        except RequestError:
            raise
        except ValueError as e:
            raise RequestError(str(e)) from None

    def refused(self, count: int = 1) -> None:
        """Count requests a server refused before they reached :meth:`serve`."""
        with self._stats_lock:
            self.stats.rejected += count

    # ------------------------------------------------------------------------------- serving
    def serve(self, requests: Sequence[GenerationRequest]) -> list[Served | RequestError]:
        """One answer per request, in order: its image, or the error that names what to fix."""
        with self._stats_lock:
            self.stats.in_flight += len(requests)
        try:
            return self._serve(requests)
        finally:
            with self._stats_lock:
                self.stats.in_flight -= len(requests)

    def _serve(self, requests: Sequence[GenerationRequest]) -> list[Served | RequestError]:
        answers: list[Served | RequestError | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            try:
                groups.setdefault(self.check(req), []).append(i)
            except RequestError as e:
                answers[i] = e
        with self._stats_lock:
            self.stats.rejected += sum(isinstance(a, RequestError) for a in answers)
        for (spec, sampling), members in groups.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start : start + self.max_batch]
                try:
                    images = self._generate([requests[i] for i in chunk], spec, sampling)
                except Exception as e:  # an engine failure: every request of the call gets it, the rest go on
                    error = RequestError(f"generation failed: {type(e).__name__}: {e}".splitlines()[0])
                    with self._stats_lock:
                        self.stats.failed += len(chunk)
                    for i in chunk:
                        answers[i] = error
                    continue
                bucket = bucket_of(len(chunk), self.buckets)
                for i, px in zip(chunk, images):
                    answers[i] = Served(px, len(chunk), bucket)
        return answers

    def _generate(self, reqs: list[GenerationRequest], spec: str, sampling) -> np.ndarray:
        """One engine call for requests of one group: padded to the bucket, the dummy rows dropped."""
        n = len(reqs)
        bucket = bucket_of(n, self.buckets)
        rows = reqs + [reqs[0]] * (bucket - n)
        seeds = [r.seed for r in rows]
        t0 = time.perf_counter()
        if self.pipe.family == "var":
            out = self.pipe.generate([r.class_id for r in rows], seed=seeds, policy=spec, sampling=sampling)
        else:
            out = self.pipe.generate(prompts=[r.prompt for r in rows], seed=seeds, policy=spec, sampling=sampling)
        with self._stats_lock:
            self.stats.busy_seconds += time.perf_counter() - t0
            self.stats.batches[n] += 1
            self.stats.buckets[bucket] += 1
            self.stats.served += n
        return to_uint8(out.images[:n])

    def warm_up(self, say=lambda _m: None) -> None:
        """Run every (policy, bucket) once before serving: a compiled engine's missing graph fails
        here, with its name, not at a client's request; first-call allocations (sessions, CUDA
        graphs, TensorRT contexts) happen now too."""
        probe = GenerationRequest(class_id=0) if self.pipe.family == "var" else GenerationRequest(prompt="a photo")
        for spec in self.policies:
            key = self.check(GenerationRequest(**{**probe.__dict__, "policy": spec}))
            for b in self.buckets:
                say(f"warm-up: {spec} at batch {b}")
                self.pipe.generate(
                    **({"labels": [0] * b} if self.pipe.family == "var" else {"prompts": ["a photo"] * b}),
                    seed=list(range(b)),
                    policy=key[0],
                    sampling=key[1],
                )
