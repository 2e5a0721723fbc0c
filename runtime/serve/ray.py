"""varrt on Ray Serve: one replica per GPU (or per CPU slot), ``@serve.batch`` in each, autoscaling.

Each replica loads its own engine from a :class:`~varrt.runtime.serve.spec.ServiceSpec` (the
recipe travels, the engine does not) and batches the requests routed to it with ``@serve.batch``;
the batch goes through the same :class:`~varrt.runtime.serve.batching.ImageService` as Triton's
(grouped by plan, padded to buckets, a generator per request).

HTTP protocol (Ray's proxy, ``POST /`` with a JSON body):

    {"class_id": 3, "seed": 0, "policy": "full", "cfg": 3.0, "top_k": 0, "top_p": 0.6}   (VAR)
    {"prompt": "a cat", "seed": 0, ...}                                                  (Infinity)
    -> 200 image/png, headers x-varrt-batch-size and x-varrt-bucket; 400 {"error": "..."} for a
       request that cannot be served (not JSON, unknown class or policy, bad sampling); 500 when the
       engine fails. GET / describes the replica (model, policies, buckets, stats).

Ray Serve admits at most ``max_ongoing_requests`` requests per replica (default 5), which also caps
the batches ``@serve.batch`` can form: it is set to twice the largest bucket here. :func:`stop`
drains before it shuts Serve down.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, fields

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from varrt.runtime.images import png_bytes
from varrt.runtime.serve.batching import GenerationRequest, RequestError, Served
from varrt.runtime.serve.spec import ServiceSpec

_FIELDS = {f.name: f.type for f in fields(GenerationRequest)}


def parse_body(body: bytes) -> GenerationRequest:
    """A request body as a GenerationRequest; a RequestError names what is wrong with it."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise RequestError('the body must be a JSON object, e.g. {"class_id": 3, "seed": 0}')
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise RequestError(f"unknown fields {unknown}; a request takes {', '.join(_FIELDS)}")
    for name in ("class_id", "seed", "top_k"):
        v = data.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise RequestError(f"{name} must be an integer, got {v!r}")
    for name in ("cfg", "top_p", "tau"):
        v = data.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise RequestError(f"{name} must be a number, got {v!r}")
    for name in ("prompt", "policy"):
        v = data.get(name)
        if v is not None and not isinstance(v, str):
            raise RequestError(f"{name} must be a string, got {v!r}")
    return GenerationRequest(**data)


class VarrtReplica:
    """One engine and its batcher (the deployment's class; see :func:`app`)."""

    def __init__(self, spec: ServiceSpec, batch_wait_s: float = 0.02) -> None:
        self.service = spec.build()
        self.generate.set_max_batch_size(self.service.max_batch)
        self.generate.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate(self, requests: list[GenerationRequest]) -> list[Served | RequestError]:
        # the engine call blocks: off the replica's event loop, which keeps taking requests meanwhile
        return await asyncio.to_thread(self.service.serve, requests)

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":  # what this replica serves (and a cheap readiness probe)
            return JSONResponse({**self.service.describe(), "stats": self.service.stats.to_dict()})
        try:
            req = parse_body(await request.body())
            self.service.check(req)  # refused before it joins a batch
        except RequestError as e:
            self.service.refused()
            return JSONResponse({"error": str(e)}, status_code=400)
        answer = await self.generate(req)
        if not isinstance(answer, Served):
            return JSONResponse({"error": str(answer)}, status_code=500)
        headers = {"x-varrt-batch-size": str(answer.batch), "x-varrt-bucket": str(answer.bucket)}
        return Response(png_bytes(answer.image), media_type="image/png", headers=headers)


@dataclass(frozen=True)
class RayOptions:
    """Replicas and batching. ``replicas`` fixed, or ``autoscale`` between 1 and ``max_replicas``."""

    replicas: int = 1
    autoscale: bool = False
    max_replicas: int = 1
    gpus_per_replica: float = 0.0  # 1 on GPU backends: one replica per GPU
    cpus_per_replica: float = 1.0
    batch_wait_ms: float = 20.0
    drain_seconds: float = 30.0  # how long a stopping replica waits for its in-flight requests

    def deployment_options(self, max_batch: int) -> dict:
        opts: dict = {
            "max_ongoing_requests": 2 * max_batch,  # >= the batch, else @serve.batch never fills it
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica},
            "graceful_shutdown_timeout_s": self.drain_seconds,
        }
        if self.autoscale:
            opts["autoscaling_config"] = {
                "min_replicas": 1,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": max_batch,  # one full batch queued per replica
            }
        else:
            opts["num_replicas"] = self.replicas
        return opts


def app(spec: ServiceSpec, options: RayOptions = RayOptions()):
    """The Ray Serve application: ``serve.run(app(spec, options), route_prefix="/")``."""
    deployment = serve.deployment(VarrtReplica, name="varrt").options(**options.deployment_options(spec.batch))
    return deployment.bind(spec, options.batch_wait_ms / 1000)


def run(
    spec: ServiceSpec,
    options: RayOptions = RayOptions(),
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "varrt",
    route_prefix: str = "/",
) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (once per cluster) and deploy the application
    ``name`` at ``route_prefix`` (returns once every replica is up); returns its URL. Needs
    ``ray.init()`` first: a local cluster (``ray.init(num_cpus=2)``), or ``ray.init(address="auto")``
    on a cluster's head node."""
    spec.check()
    serve.start(http_options={"host": host, "port": port})
    serve.run(app(spec, options), name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}/"


def drain(name: str = "varrt") -> None:
    """Delete the application ``name``, returning once its replicas are gone: each first finishes
    its in-flight requests (up to ``RayOptions.drain_seconds``) while the proxies, still up, carry
    their answers back."""
    serve.delete(name)


def stop(name: str = "varrt") -> None:
    """Drain, then shut Serve down. ``serve.shutdown()`` alone kills the HTTP proxies at once,
    dropping the connections of requests still being generated; only once the application is
    drained are the proxies stopped."""
    try:
        drain(name)
    finally:
        serve.shutdown()
