"""``varrt serve``: one engine loaded once, served over Triton (HTTP + gRPC, KServe v2) or Ray Serve."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import add_backend_args, add_model_args, add_policy_args, policy_specs, status


def spec_of(args: argparse.Namespace):
    from varrt.runtime.cli.common import weights_of
    from varrt.runtime.serve.spec import ServiceSpec

    model_given = args.checkpoint or args.vae or args.random_weights or args.model
    if args.artifact and model_given:
        raise ValueError("--artifact and the model options (--checkpoint, --vae, --random-weights) exclude each other")
    return ServiceSpec(
        artifact=args.artifact,
        weights=None if args.artifact else weights_of(args),
        backend=args.backend,
        policies=policy_specs(args),
        max_batch=args.max_batch,
        providers=tuple(args.providers.split(",")),
        threads=args.threads,
        text_encoder=args.text_encoder,
        warm_up=not args.no_warmup,
    ).check()


def cmd_serve(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65533:
        raise ValueError(f"--port must be in 1..65533 (gRPC and metrics take the next two), got {args.port}")
    if args.max_queue_delay_ms < 0:
        raise ValueError(f"--max-queue-delay-ms must be >= 0, got {args.max_queue_delay_ms}")
    spec = spec_of(args)
    if args.engine == "ray":
        return _serve_ray(spec, args)
    from varrt.runtime.serve.triton import TritonOptions, TritonServer, import_pytriton

    import_pytriton()  # the missing extra is named before any export or load
    with status("load", args) as say:
        service = spec.build(say)
    options = TritonOptions(
        host=args.host, port=args.port, max_queue_delay_ms=args.max_queue_delay_ms, drain_seconds=args.drain_seconds
    )
    server = TritonServer(service, options)
    http, grpc, metrics = options.ports
    d = service.describe()
    con.info(
        f"serving {d['model']} [{d['backend']}] policies {', '.join(d['policies'])}, buckets {d['buckets']}: "
        f"HTTP {args.host}:{http}, gRPC {args.host}:{grpc}, metrics http://{args.host}:{metrics}/metrics "
        f"(model 'varrt'; Ctrl-C drains and stops)"
    )
    server.serve_forever()
    return 0


def _serve_ray(spec, args: argparse.Namespace) -> int:
    import signal
    import threading

    from varrt.engines.base import BackendUnavailable

    try:
        import ray
        import ray.serve
    except ImportError as e:
        raise BackendUnavailable(f"--engine ray needs Ray Serve ({e}); pip install 'varrt[serve]'") from None
    from varrt.runtime.serve.ray import RayOptions, run, stop

    gpu = args.backend in ("trt", "torch-graph") or "CUDAExecutionProvider" in args.providers
    options = RayOptions(
        replicas=args.replicas,
        autoscale=args.max_replicas is not None,
        max_replicas=args.max_replicas or args.replicas,
        gpus_per_replica=1.0 if gpu else 0.0,
        cpus_per_replica=float(args.threads or 1),
        batch_wait_ms=args.max_queue_delay_ms,
        drain_seconds=args.drain_seconds,
    )
    ray.init(address=args.ray_address, include_dashboard=False)
    try:
        url = run(spec, options, host=args.host, port=args.port)
        con.info(f"serving on Ray Serve at {url} (POST JSON; GET / describes it; Ctrl-C drains and stops)")
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    finally:
        stop()  # replicas finish their in-flight requests first
        ray.shutdown()
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve generation over Triton (HTTP/gRPC, KServe v2; default) or Ray Serve, with dynamic batching",
    )
    add_model_args(p)
    add_policy_args(p, many=True)
    add_backend_args(p)
    p.add_argument("--text-encoder", type=Path, help="Infinity artifacts: the flan-t5-xl folder (the tokenizer)")
    g = p.add_argument_group("server")
    g.add_argument("--engine", choices=["triton", "ray"], default="triton", help="triton (default) or ray (Ray Serve)")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8000, help="HTTP port (Triton: gRPC on port+1, metrics on port+2)")
    g.add_argument(
        "--max-batch", type=int, help="largest batch (default: the artifact's; 4 when exporting); buckets 1, 2, 4, ..."
    )
    g.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=20.0,
        help="how long a request waits for others to batch with (latency at low load vs throughput at high load)",
    )
    g.add_argument("--drain-seconds", type=int, default=30, help="shutdown waits this long for in-flight work")
    g.add_argument("--no-warmup", action="store_true", help="skip running every policy x bucket once at start-up")
    g.add_argument("--replicas", type=int, default=1, help="ray: replicas (one per GPU on GPU backends)")
    g.add_argument("--max-replicas", type=int, help="ray: autoscale between 1 and this many replicas")
    g.add_argument("--ray-address", default=None, help="ray: a running cluster ('auto' on its head node)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_serve)
