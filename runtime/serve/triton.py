"""varrt on Triton Inference Server (KServe v2 over HTTP and gRPC, Prometheus metrics) via PyTriton.

PyTriton runs the real ``tritonserver`` binary (bundled in the wheel) with its Python backend; the
backend's stub hands each batch that Triton's dynamic batcher formed to :func:`infer` in this
process, where the :class:`~varrt.runtime.serve.batching.ImageService` groups it by plan.

The model ``varrt`` (inputs and outputs per row; a request may carry several rows):

    inputs   class_id INT64 (VAR) | prompt BYTES (Infinity); optional: seed INT64 (0), policy BYTES
             ("full"), cfg FP32, top_k INT64, top_p FP32, tau FP32 (Infinity); missing = the model's default
    outputs  image UINT8 (H, W, 3); png BYTES (the PNG file); png_base64 BYTES (the same, base64 text,
             for JSON clients such as curl); error BYTES ("" when served); batch_size INT32 (requests
             in the engine call the row ran in); bucket INT32 (the batch size that call ran at)

A request the service cannot serve (unknown class, unknown policy, top_p outside (0, 1], ...) is
answered with its one-line message in ``error`` and no image outputs, and the other requests of its
batch are served: PyTriton can only fail a whole batch, never one request of it. Requests that
Triton itself rejects never reach the model: wrong dtype or shape, more rows than ``max_batch_size``
(HTTP 400 / gRPC INVALID_ARGUMENT), malformed JSON (HTTP 500 from tritonserver 2.51: "failed to
parse the request JSON buffer: ...", its JSON parser's errors are internal ones).

Triton's ``max_queue_delay`` is how long the first request of a batch waits for others: up to
that much extra latency at low load, in exchange for batches (throughput) at high load. No
preferred batch sizes are set: with the buckets as preferred sizes (1 among them) Triton would send
any queue at once as its largest preferred batch and never wait, so the delay would do nothing.
Triton waits for a full largest bucket (``max_batch_size``) or the delay, whichever comes first,
and the service pads what it gets to a bucket.
"""

from __future__ import annotations

import base64
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from varrt.runtime.images import png_bytes
from varrt.runtime.serve.batching import GenerationRequest, ImageService, RequestError, Served

MODEL_NAME = "varrt"
OUTPUTS = ("image", "png", "png_base64", "error", "batch_size", "bucket")
_INPUTS = {  # name: (numpy dtype, GenerationRequest field)
    "class_id": (np.int64, "class_id"),
    "prompt": (np.bytes_, "prompt"),
    "seed": (np.int64, "seed"),
    "policy": (np.bytes_, "policy"),
    "cfg": (np.float32, "cfg"),
    "top_k": (np.int64, "top_k"),
    "top_p": (np.float32, "top_p"),
    "tau": (np.float32, "tau"),
}


def import_pytriton():
    from varrt.engines.base import BackendUnavailable

    try:
        import pytriton.triton  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(
            f"the Triton server needs PyTriton ({e}); install the serve extra: pip install 'varrt[serve]'"
        ) from None


def python_library_path() -> None:
    """Put this interpreter's lib directory first on LD_LIBRARY_PATH: PyTriton's Python-backend stub
    links libpython3.x.so dynamically and would otherwise load the system's copy (another build)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not any(Path(libdir).glob("libpython3*.so*")):
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if paths[:1] != [libdir]:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *(p for p in paths if p != libdir)])


# ------------------------------------------------------------------------------------------ requests
def rows_of(data: dict[str, np.ndarray]) -> list[GenerationRequest]:
    """The rows of one Triton request as generation requests (a RequestError names a bad input)."""
    sizes = {name: arr.shape[0] for name, arr in data.items()}
    if len(set(sizes.values())) > 1:
        raise RequestError(f"every input needs the same number of rows, got {sizes}")
    n = next(iter(sizes.values()), 0)
    if n == 0:
        raise RequestError("the request has no rows: send class_id (VAR) or prompt (Infinity), one row per image")
    rows = []
    for i in range(n):
        fields = {}
        for name, arr in data.items():
            if name not in _INPUTS:
                continue
            kind, field = _INPUTS[name]
            flat = np.asarray(arr[i]).reshape(-1)
            if flat.size != 1:
                raise RequestError(f"input {name!r} takes one value per row, got {flat.size}")
            v = flat[0]
            if kind is np.bytes_:
                fields[field] = (v if isinstance(v, bytes) else str(v).encode()).decode("utf-8", "replace")
            elif kind is np.int64:
                fields[field] = int(v)
            else:
                fields[field] = float(v)
        rows.append(GenerationRequest(**fields))
    return rows


def _answer(rows: Sequence[Served], requested: set[str]) -> dict[str, np.ndarray]:
    n = len(rows)
    out: dict[str, np.ndarray] = {
        "error": np.array([[b""]] * n, dtype=np.object_),
        "batch_size": np.array([[r.batch] for r in rows], dtype=np.int32),
        "bucket": np.array([[r.bucket] for r in rows], dtype=np.int32),
    }
    if "image" in requested:
        out["image"] = np.stack([r.image for r in rows])
    if "png" in requested or "png_base64" in requested:
        files = [png_bytes(r.image) for r in rows]
        out["png"] = np.array([[f] for f in files], dtype=np.object_)
        out["png_base64"] = np.array([[base64.b64encode(f)] for f in files], dtype=np.object_)
    return out


def _error(message: str, n: int) -> dict[str, np.ndarray]:
    """A refused request: its message in ``error`` (one per row); no image outputs at all."""
    n = max(n, 1)
    return {
        "error": np.array([[message.encode()]] * n, dtype=np.object_),
        "batch_size": np.zeros((n, 1), dtype=np.int32),
        "bucket": np.zeros((n, 1), dtype=np.int32),
    }


def make_infer(service: ImageService):
    """The inference callable PyTriton calls with each batch Triton formed (a list of requests)."""

    def infer(requests) -> list[dict[str, np.ndarray]]:
        parsed: list[list[GenerationRequest] | RequestError] = []
        for r in requests:
            try:
                rows = rows_of(r.data)
                for row in rows:
                    service.check(row)  # a request with a bad row is refused whole, before any work
                parsed.append(rows)
            except RequestError as e:
                parsed.append(e)
                service.refused()
        flat = [row for p in parsed if not isinstance(p, RequestError) for row in p]
        answers = iter(service.serve(flat))
        responses = []
        for r, p in zip(requests, parsed):
            if isinstance(p, RequestError):
                responses.append(_error(str(p), _rows_in(r.data)))
                continue
            mine = [next(answers) for _ in p]
            failed = next((a for a in mine if not isinstance(a, Served)), None)
            requested = set(r.requested_output_names or OUTPUTS)
            responses.append(_error(str(failed), len(p)) if failed else _answer(mine, requested))
        return responses

    return infer


def _rows_in(data: dict[str, np.ndarray]) -> int:
    return max((a.shape[0] for a in data.values()), default=1)


# ------------------------------------------------------------------------------------------ server
@dataclass(frozen=True)
class TritonOptions:
    host: str = "127.0.0.1"
    port: int = 8000  # HTTP; gRPC on port + 1 and metrics on port + 2 unless given
    grpc_port: int | None = None
    metrics_port: int | None = None
    max_queue_delay_ms: float = 20.0
    drain_seconds: int = 30  # how long shutdown waits for in-flight requests
    verbose: bool = False

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.port, self.grpc_port or self.port + 1, self.metrics_port or self.port + 2


class TritonServer:
    """The service behind Triton: ``start()`` returns once the model is ready, ``stop()`` lets the
    in-flight requests finish (up to ``drain_seconds``) and then exits Triton."""

    def __init__(self, service: ImageService, options: TritonOptions = TritonOptions()) -> None:
        import_pytriton()
        self.service, self.options = service, options
        self._triton = None

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    def _bind(self):
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        python_library_path()
        http, grpc, metrics = self.options.ports
        host = self.options.host
        config = TritonConfig(
            http_address=host,
            http_port=http,
            grpc_address=host,
            grpc_port=grpc,
            metrics_address=host,
            metrics_port=metrics,
            exit_timeout_secs=self.options.drain_seconds,
            log_verbose=1 if self.options.verbose else 0,
        )
        triton = Triton(config=config)
        inputs = [Tensor(name=n, dtype=kind, shape=(1,), optional=True) for n, (kind, _) in _INPUTS.items()]
        outputs = [
            Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3)),
            *(Tensor(name=n, dtype=np.bytes_, shape=(1,)) for n in ("png", "png_base64", "error")),
            *(Tensor(name=n, dtype=np.int32, shape=(1,)) for n in ("batch_size", "bucket")),
        ]
        batcher = DynamicBatcher(max_queue_delay_microseconds=int(self.options.max_queue_delay_ms * 1000))
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=make_infer(self.service),
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(max_batch_size=self.service.max_batch, batcher=batcher),
        )
        return triton

    def start(self) -> TritonServer:
        self._triton = self._bind()
        self._triton.run()
        return self

    def serve_forever(self) -> None:
        """Serve until SIGINT/SIGTERM, then drain and stop (the command line's loop)."""
        import signal

        def interrupt(*_) -> None:
            raise KeyboardInterrupt  # PyTriton's serve loop drains and stops on it

        self._triton = self._bind()
        signal.signal(signal.SIGTERM, interrupt)
        self._triton.serve()

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
