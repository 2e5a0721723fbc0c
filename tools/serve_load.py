"""Load and fault test of `varrt serve` (Triton via PyTriton, or Ray Serve) on loopback: bounded.

    python tools/serve_load.py --engine triton --name demo-serve-triton
    python tools/serve_load.py --engine ray --name demo-serve-ray

Loads the service once in this process (the demo model by default, exported for the buckets once
and then reused from the cache) and puts one server per ``max_queue_delay`` on free 127.0.0.1
ports, so that the delays are compared side by side (tools/serve_targets.py: Triton servers in
front of this process's engine; Ray Serve applications on a local two-CPU cluster, each replica
loading the same export). Then, in order:

1. load: waves alternating between the delays (A B, B A, ...; ``--warmup`` uncounted waves per
   delay first, then ``--repeat`` counted ones). In a wave K client threads send N requests each,
   back to back: valid ones with mixed policies and seeds, and every ``--invalid-every``-th one
   invalid, in turn: unknown class, unknown policy, top_p 0, a request with more rows than the
   largest batch (Ray, one image per request: a list of class ids), malformed JSON;
   ``--disconnects`` more clients send a valid request and hang up before the answer;
2. checks: every valid request got exactly one answer, HTTP 200 with an image equal to the one
   the same request gets alone (recomputed afterwards, in-process, at bucket 1: what `varrt
   generate` computes); every invalid one its one-line error; the service generated each valid
   request once (its own counter);
3. low load: one client sends ``--low-load`` valid requests one at a time per delay, alternating:
   the latency a queue delay adds when nobody arrives to batch with;
4. drain: per server a last wave of K requests, and the server is stopped as soon as the first of
   them is inside the engine (Triton) or answered (Ray; its engine is in another process), the
   others still generating or queued: each must still get its image.

Writes benchmarks/results/<name>.json and .md: per delay the median (and min-max) over waves of
each wave's latency p50/p90/p99 and throughput, the batch sizes formed, the server's counters,
the machine, its load average and the versions. Exit code 1 if any check failed. The demo model's
figures come from its trained weights; with ``--artifact`` of random weights they are timing only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from pathlib import Path

import numpy as np
from serve_targets import RayTarget, TritonTarget

from varrt.runtime.bench import provenance, stats, write_results
from varrt.runtime.knife_edge import ROW_ROUNDING, knife_edge
from varrt.runtime.serve.batching import GenerationRequest, Served, same_image
from varrt.runtime.serve.spec import ServiceSpec

INVALID = ("unknown class", "unknown policy", "top_p 0", "oversized batch", "malformed JSON")


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


class Workload:
    """The requests of the run, deterministic from (wave, client, index)."""

    def __init__(self, service, invalid_every: int) -> None:
        self.policies = service.policies
        self.classes = len(service.pipe.classes) or service.pipe.engine.var_config.num_classes
        self.max_batch = service.max_batch
        self.invalid_every = invalid_every
        self.invalid_seen = 0

    def item(self, target, wave: int, client: int, i: int, lock: threading.Lock) -> tuple[str, object]:
        """('valid', GenerationRequest) or (kind of invalid, raw body bytes | GenerationRequest)."""
        n = wave * 100_000 + client * 1000 + i
        if self.invalid_every and (i + client) % self.invalid_every == self.invalid_every - 1:
            with lock:
                kind = INVALID[self.invalid_seen % len(INVALID)]
                self.invalid_seen += 1
            if kind == "unknown class":
                return kind, GenerationRequest(class_id=10_000 + n)
            if kind == "unknown policy":
                return kind, GenerationRequest(class_id=0, policy="no-such-policy")
            if kind == "top_p 0":
                return kind, GenerationRequest(class_id=0, top_p=0.0)
            if kind == "oversized batch":
                return kind, target.oversized(self.max_batch + 1)
            return kind, b'{"inputs": [{"name": "class_id", "datatype": "INT64", "shape": [1, 1], "data": ['
        req = GenerationRequest(class_id=n % self.classes, seed=n, policy=self.policies[n % len(self.policies)])
        return "valid", req


def image_size(service) -> int:
    probe = GenerationRequest(class_id=0, policy=service.policies[0])
    (answer,) = service.serve([probe])
    return int(answer.image.shape[0])


def serve_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("nvidia-pytriton", "tritonclient", "ray"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def load_wave(target, work: Workload, args: argparse.Namespace, wave: int) -> dict:
    """K clients x N requests back to back (plus the hung-up clients): every record and the wall time."""
    lock = threading.Lock()
    records: list[dict] = []

    def client(k: int) -> None:
        for i in range(args.requests):
            kind, payload = work.item(target, wave, k, i, lock)
            t = time.perf_counter()
            reply = target.send(payload)
            with lock:
                records.append({"client": k, "kind": kind, "request": payload, "reply": reply,
                                "seconds": time.perf_counter() - t})  # fmt: skip

    deadline = time.monotonic() + args.timeout
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients + args.disconnects) as pool:
        futures = [pool.submit(client, k) for k in range(args.clients)]
        for d in range(args.disconnects):
            pool.submit(target.hang_up, GenerationRequest(class_id=d, seed=900_000 + wave * 100 + d))
        for f in as_completed(futures, timeout=max(1.0, deadline - time.monotonic())):
            f.result()
    wall = time.perf_counter() - t0
    latencies = [r["seconds"] for r in records if r["kind"] == "valid" and r["reply"].status == 200]
    return {
        "records": records,
        "wall_s": wall,
        "latency_s": {q: percentile(latencies, int(q[1:])) for q in ("p50", "p90", "p99")},
        "throughput_images_per_s": len(latencies) / wall,
    }


def check_records(records: list[dict], service, expected: dict) -> list[str]:
    """Every valid request one answer, HTTP 200, the image it gets alone; every invalid one its error."""
    failures: list[str] = []
    for r in records:
        reply = r["reply"]
        if r["kind"] == "valid":
            if reply.status != 200 or reply.error or reply.image is None:
                failures.append(f"valid request {r['request']} got {reply.status} {reply.error!r}")
                continue
            (alone,) = service.serve([r["request"]])
            if not isinstance(alone, Served) or not same_image(alone.image, reply.image):
                req = r["request"]
                gap, si, pos = knife_edge(service.pipe, req.class_id, req.seed, req.policy)
                if gap < ROW_ROUNDING:  # the batch's float rounding can tip this draw: no mixing shown
                    r["knife_edge"] = {"gap": gap, "scale": si, "token": pos}
                else:
                    failures.append(f"{req}: the served image differs from its image alone (narrowest cut {gap:.2g})")
            elif not np.array_equal(alone.image, reply.image):
                r["rounding"] = True  # the same tokens; the decoder at another batch size moved a value
        elif reply.image is not None or expected[r["kind"]] not in reply.error or "\n" in reply.error:
            failures.append(f"{r['kind']}: expected an error with {expected[r['kind']]!r}, got {reply.error!r}")
    return failures


def drain(target, work: Workload, clients: int, delay: float) -> dict:
    """Send a wave of K requests and stop the server once the first of them is inside the engine
    (Triton: the in-process service says so) or answered (Ray), the others still being generated
    or queued: each must still get its image."""
    wave = [GenerationRequest(class_id=k % work.classes, seed=5000 + k, policy=work.policies[k % len(work.policies)])
            for k in range(clients)]  # fmt: skip
    with ThreadPoolExecutor(len(wave)) as pool:
        pending = [pool.submit(target.send, req) for req in wave]
        if isinstance(target, TritonTarget):
            wait_until = time.monotonic() + 120
            while not target.engine_busy() and time.monotonic() < wait_until:
                time.sleep(0.001)
        else:
            wait(pending, timeout=300, return_when=FIRST_COMPLETED)
        in_flight = sum(not p.done() for p in pending)
        t_stop = time.perf_counter()
        target.stop()
        stop_seconds = time.perf_counter() - t_stop
        drained = [p.result(timeout=300) for p in pending]
    answered = sum(d.status == 200 and d.image is not None for d in drained)
    unanswered = [d for d in drained if not (d.status == 200 and d.image is not None)]
    refused = [d for d in unanswered if refused_at_shutdown(d)]
    return {"max_queue_delay_ms": delay, "wave": len(wave), "in_flight_at_stop": in_flight,
            "answered": answered, "refused_after_stop_began": len(refused),
            "dropped": [f"{d.status} {d.error}" for d in unanswered if d not in refused],
            "refusals": sorted({f"{d.status} {d.error}" for d in refused}), "stop_seconds": stop_seconds}  # fmt: skip


def refused_at_shutdown(reply) -> bool:
    """A request that reached the server after its shutdown began, refused as such: Triton's "Server
    not ready" (it stops admitting before it drains), Ray's 503 / 404 for a deleted application,
    or a refused connection. Requests the server had admitted must be answered, not dropped."""
    text = reply.error.lower()
    return reply.status in (503, 404) or any(s in text for s in ("not ready", "unavailable", "connectionrefused"))


def low_load(targets: dict, work: Workload, requests: int) -> dict:
    """One client, valid requests back to back, the delays alternating request by request: what a
    queue delay costs when nobody arrives to batch with (a request waits up to the delay alone)."""
    seconds: dict[float, list[float]] = {d: [] for d in targets}
    for i in range(requests):
        for delay in list(targets) if i % 2 == 0 else list(targets)[::-1]:
            req = GenerationRequest(class_id=i % work.classes, seed=7000 + i, policy=work.policies[0])
            t = time.perf_counter()
            reply = targets[delay].send(req)
            if reply.status == 200 and reply.image is not None:
                seconds[delay].append(time.perf_counter() - t)
    return {str(d): stats(v) for d, v in seconds.items() if v}


def run(args: argparse.Namespace) -> dict:
    spec = ServiceSpec(
        artifact=args.artifact,
        policies=tuple(args.policy or ("full", "fastvar")),
        max_batch=args.max_batch,
        threads=args.threads,
    )
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    # this process's service: Triton's engine, and for both the reference each answer is checked against
    service = spec.build(say=lambda m: print(f"  {m}", flush=True))
    startup = time.perf_counter() - t0
    kind = TritonTarget if args.engine == "triton" else RayTarget
    targets = {}
    try:
        for delay in args.delays:
            if kind is TritonTarget:
                targets[delay] = TritonTarget(service, delay, args.drain_seconds)
            else:  # the export is cached by now: each replica loads it
                targets[delay] = RayTarget(spec, delay, args.drain_seconds)
        print(f"serving {service.describe()} at {[t.url for t in targets.values()]}", flush=True)
        return measure(args, service, targets, kind, startup, load_start)
    finally:
        kind.close_all()


def measure(args: argparse.Namespace, service, targets: dict, kind, startup: float, load_start) -> dict:
    work = Workload(service, args.invalid_every)
    waves: list[dict] = []
    failures: list[str] = []
    order = [
        d for rep in range(args.warmup + args.repeat) for d in (args.delays if rep % 2 == 0 else args.delays[::-1])
    ]
    for n, delay in enumerate(order):
        target = targets[delay]
        counted = n >= args.warmup * len(args.delays)
        served_before = target.served()
        wave = load_wave(target, work, args, n)
        served = target.served() - served_before
        valid = sum(r["kind"] == "valid" for r in wave["records"])
        if not valid <= served <= valid + args.disconnects:
            failures.append(f"wave {n}: the service generated {served} images for {valid} valid requests")
        if len(wave["records"]) != args.clients * args.requests:
            failures.append(f"wave {n}: {len(wave['records'])} answers for {args.clients * args.requests} requests")
        wave.update(wave=n, max_queue_delay_ms=delay, counted=counted, valid=valid, served=served)
        wave["formed_batch_sizes"] = dict(sorted(Counter(
            r["reply"].batch_size for r in wave["records"] if r["kind"] == "valid" and r["reply"].status == 200
        ).items()))  # fmt: skip
        tag = "" if counted else ", warm-up"
        rate, sizes = wave["throughput_images_per_s"], wave["formed_batch_sizes"]
        print(
            f"wave {n} (delay {delay} ms{tag}): p50 {wave['latency_s']['p50']:.2f} s, {rate:.2f} img/s, "
            f"batches {sizes}",
            flush=True,
        )
        waves.append(wave)
    alone = low_load(targets, work, args.low_load) if args.low_load else {}
    counters = {d: t.counters() for d, t in targets.items()}
    for wave in waves:
        failures += [f"wave {wave['wave']}: {f}" for f in check_records(wave["records"], service, kind.expected)]
    answered = [r for w in waves for r in w["records"] if r["kind"] == "valid" and r["reply"].image is not None]
    images = {
        "answered": len(answered),
        "bytes_equal_to_alone": sum(not r.get("rounding") and "knife_edge" not in r for r in answered),
        "within_one_level_of_alone": sum(bool(r.get("rounding")) for r in answered),
        "knife_edge": [{"request": str(r["request"]), **r["knife_edge"]} for r in answered if "knife_edge" in r],
    }
    drains = [drain(targets[d], work, args.clients, d) for d in args.delays]
    failures += [f"shutdown at {d['max_queue_delay_ms']} ms: admitted requests dropped: {d['dropped']}"
                 for d in drains if d["dropped"]]  # fmt: skip

    per_delay = {}
    for delay in args.delays:
        mine = [w for w in waves if w["max_queue_delay_ms"] == delay and w["counted"]]
        formed = Counter()
        for w in mine:
            formed.update(w["formed_batch_sizes"])
        per_delay[str(delay)] = {
            "waves": len(mine),
            **{f"latency_{q}_s": stats([w["latency_s"][q] for w in mine]) for q in ("p50", "p90", "p99")},
            "throughput_images_per_s": stats([w["throughput_images_per_s"] for w in mine]),
            "formed_batch_sizes": {str(k): v for k, v in sorted(formed.items())},
            "server_counters": counters[delay],
        }
    invalid = Counter(r["kind"] for w in waves for r in w["records"] if r["kind"] != "valid")
    return {
        "provenance": {
            **provenance(warmup=args.warmup, repeat=args.repeat),
            "serve_versions": serve_versions(),
        },
        "server": {
            **service.describe(),
            "engine": kind.engine,
            "max_queue_delay_ms": list(args.delays),
            "weights": service.pipe.weights.label if service.pipe.weights else "artifact",
            "image_size": image_size(service),
        },
        "workload": {
            "clients": args.clients,
            "requests_per_client": args.requests,
            "waves_per_delay": args.repeat,
            "warmup_waves_per_delay": args.warmup,
            "invalid_every": args.invalid_every,
            "invalid": dict(invalid),
            "disconnects_per_wave": args.disconnects,
        },
        "startup_s": startup,
        "per_delay": per_delay,
        "low_load_latency_s": alone,
        "waves": [{k: v for k, v in w.items() if k != "records"} for w in waves],
        "service_stats": service.stats.to_dict(),
        "images": images,
        "drain": drains,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "failures": failures,
    }


def markdown(r: dict) -> str:
    p, s, w = r["provenance"], r["server"], r["workload"]
    m = p["machine"]

    def cell(st: dict, fmt: str = ".2f") -> str:
        return f"{st['median']:{fmt}} ({st['min']:{fmt}}-{st['max']:{fmt}})"

    lines = [
        f"# Serving load and fault test: {s['model']} on {s['engine']}, {s['backend']}",
        "",
        f"- date {p['date']}, commit `{p['commit']}`, command `{p['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; {m['platform']}; "
        f"Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in {**p["versions"], **p["serve_versions"]}.items()),
        f"- load average of the machine (shared with other jobs) at start / end: "
        f"{' '.join(f'{x:.1f}' for x in r['load_average']['start'])} / "
        f"{' '.join(f'{x:.1f}' for x in r['load_average']['end'])}",
        f"- model: {s['model']}, {len(s['classes']) or 'all'} classes ({', '.join(s['classes'][:4])}"
        f"{', ...' if len(s['classes']) > 4 else ''}), {s['image_size']} px images",
        f"- weights: **{s['weights']}**; policies {', '.join(s['policies'])}; buckets {s['buckets']}; warm-up: every "
        f"policy x bucket once before serving, then {w['warmup_waves_per_delay']} uncounted wave(s) per delay",
        f"- workload: one wave = {w['clients']} concurrent clients x {w['requests_per_client']} requests back to back "
        f"(every {w['invalid_every']}-th invalid, in turn: {', '.join(INVALID)}) plus "
        f"{w['disconnects_per_wave']} client(s) hanging up mid-request; {w['waves_per_delay']} counted waves per "
        "max_queue_delay, the delays alternating wave by wave ("
        + (
            "one Triton each, in front of the same engine)"
            if s["engine"].startswith("triton")
            else "one Ray Serve application each, one replica of one CPU with its own engine)"
        ),
        "",
        "Per max_queue_delay: the median over waves of each wave's figure (min-max over waves).",
        "",
        "| max_queue_delay ms | p50 s | p90 s | p99 s | throughput img/s | batch sizes formed (requests: count) |",
        "|---|---|---|---|---|---|",
    ]
    for delay, d in r["per_delay"].items():
        lines.append(
            f"| {delay} | {cell(d['latency_p50_s'])} | {cell(d['latency_p90_s'])} | {cell(d['latency_p99_s'])} | "
            f"{cell(d['throughput_images_per_s'])} | {d['formed_batch_sizes']} |"
        )
    if r["low_load_latency_s"]:
        lines += [
            "",
            "Low load: one client, one request at a time, the delays alternating request by request "
            "(median and min-max latency over the requests):",
            "",
            "| max_queue_delay ms | latency s | requests |",
            "|---|---|---|",
            *(f"| {d} | {cell(st, '.3f')} | {st['n']} |" for d, st in r["low_load_latency_s"].items()),
        ]
    lines += [
        "",
        f"This process's engine calls by size {r['service_stats']['batch_sizes']} and by bucket "
        f"{r['service_stats']['buckets']} ("
        + ("every wave and the checks' reruns" if s["engine"].startswith("triton") else "the checks' reruns")
        + "); the server's counters per delay: "
        + "; ".join(f"{k} ms {d['server_counters']}" for k, d in r["per_delay"].items())
        + (
            " (exec_count = batches Triton formed, before the service split them by plan)."
            if s["engine"].startswith("triton")
            else " (each replica's service: batch_sizes = engine calls by size)."
        ),
        "",
        "Shutdown: "
        + "; ".join(
            f"delay {d['max_queue_delay_ms']} ms: {d['wave']} requests sent, {d['in_flight_at_stop']} unanswered when "
            f"stop began, {d['answered']} answered, {d['refused_after_stop_began']} refused as arriving after "
            f"the stop began{' ' + str(d['refusals']) if d['refusals'] else ''}, {len(d['dropped'])} dropped; "
            f"stop took {d['stop_seconds']:.1f} s"
            for d in r["drain"]
        )
        + ".",
        "",
        f"Images: {r['images']['answered']} valid requests answered; {r['images']['bytes_equal_to_alone']} byte "
        f"for byte the image the request gets alone (batch 1: what `varrt generate` computes), "
        f"{r['images']['within_one_level_of_alone']} the same tokens with a few values one level off (the "
        "decoder's float rounding at another batch size)"
        + (
            f"; {len(r['images']['knife_edge'])} another image on a knife edge (alone, its narrowest top-k/top-p "
            f"cut is below the rounding bound {ROW_ROUNDING:g}, so the batch's float rounding can tip a draw; "
            "docs/serving.md): "
            + "; ".join(f"{k['request']} (gap {k['gap']:.2g} at scale {k['scale']})" for k in r["images"]["knife_edge"])
            if r["images"].get("knife_edge")
            else ""
        )
        + ".",
        "",
        "Checks: "
        + (
            "all passed (every valid request exactly one answer, the image it gets alone; every invalid "
            "one its one-line error; the service generated each valid request once; at shutdown every "
            "request the server had admitted answered, none dropped)."
            if not r["failures"]
            else "FAILED: " + "; ".join(r["failures"])
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["triton", "ray"], default="triton")
    ap.add_argument("--artifact", type=Path, help="an export directory (default: the demo model, exported once)")
    ap.add_argument("--policy", action="append", help="policies to serve and mix (default full, fastvar)")
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--invalid-every", type=int, default=5, help="every n-th request of a client is invalid (0: none)")
    ap.add_argument("--disconnects", type=int, default=1)
    ap.add_argument(
        "--delays",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.0, 20.0],
        help="max_queue_delay values in ms, compared side by side (comma-separated)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="counted waves per delay")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted waves per delay first")
    ap.add_argument("--low-load", type=int, default=10, help="requests of one lone client per delay (0: none)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=1800, help="the load phase ends by then, whatever happens")
    ap.add_argument("--drain-seconds", type=int, default=900, help="how long shutdown may wait for in-flight work")
    ap.add_argument("--name", help="results file name (default: demo-serve-<engine>)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.repeat < 1 or args.warmup < 0:
        ap.error("--clients, --requests and --repeat must be >= 1, --warmup >= 0")
    if any(d < 0 for d in args.delays) or len(set(args.delays)) != len(args.delays):
        ap.error("--delays: distinct values >= 0, e.g. 0,20")
    args.name = args.name or f"demo-serve-{args.engine}"
    report = run(args)
    printable = {k: v for k, v in report.items() if k != "provenance"}
    print(json.dumps(printable, indent=1, default=str))
    paths = write_results(
        args.out / args.name, {".json": json.dumps(report, indent=1, default=str), ".md": markdown(report)}
    )
    print("wrote " + ", ".join(map(str, paths)))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
