"""`varrt serve --engine ray` on a local two-CPU Ray cluster (loopback): concurrent requests are all
answered, batched by ``@serve.batch`` and the service, each with the image it gets alone (and
`varrt generate`'s); bad requests get a 400 with one line; SIGTERM lets in-flight requests finish
(``serve.ray.stop()``) and the command exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the serve extra is not installed: pip install 'varrt[serve]'")

from varrt.runtime.images import to_uint8
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.serve.batching import GenerationRequest, ImageService, same_image
from varrt.runtime.serve.client import free_ports, ray_infer

POLICIES = ("full", "fastvar")


def wait_described(url: str, proc: subprocess.Popen, timeout: float = 600) -> dict:
    """GET / until the replica answers (the command deploys, then listens), or the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"varrt serve --engine ray exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200:
                    return json.loads(r.read())
        except (OSError, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def test_varrt_serve_ray_batches_answers_refuses_and_drains(policy_artifact, tiny_artifact, tmp_path):
    """`varrt serve --engine ray` as a user runs it (its own local Ray cluster of two CPUs)."""
    (port,) = free_ports(1)
    varrt = Path(sys.executable).with_name("varrt")  # the installed command
    cmd = [str(varrt), "serve", "--engine", "ray", "--artifact", str(policy_artifact), "--port", str(port),
           *(a for p in POLICIES for a in ("--policy", p)), "--threads", "1", "--max-queue-delay-ms", "500",
           "--no-warmup"]  # fmt: skip
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            described = wait_described(url, proc)
            # ORT's symbolic sessions also run batch 1 of the batch-3 artifact (its conditioner and decoder)
            assert described["buckets"] == [1, 3] and described["policies"] == list(POLICIES)
            _batches_answers_refusals_and_drain(url, proc, policy_artifact, tiny_artifact)
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "serving on Ray Serve" in log.read_text()


def _batches_answers_refusals_and_drain(url, proc, policy_artifact, tiny_artifact) -> None:
    valid = [{"class_id": c, "seed": 40 + c, "policy": "fastvar" if c in (2, 5) else "full"} for c in range(8)]
    invalid = [
        (b'{"class_id": 1, "policy": ', "the body is not JSON"),
        (b'{"class_id": 9999}', "unknown class id(s) [9999]"),
        (b'{"class_id": 1, "policy": "warp"}', "unknown policy 'warp'"),
        (b'{"class_id": 1, "top_p": 0}', "top_p must be in (0, 1]"),
        (b'{"class_id": 1, "colour": "red"}', "unknown fields ['colour']"),
    ]
    bodies = [json.dumps(v).encode() for v in valid] + [b for b, _ in invalid]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: ray_infer(url, b, timeout=300), bodies))

    local = ImageService(Pipeline.from_artifact(policy_artifact, threads=1), POLICIES)
    generate_alone = Pipeline.from_artifact(tiny_artifact, threads=1)  # `varrt generate`: batch 1, full
    for req, reply in zip(valid, replies):
        assert reply.status == 200 and reply.image is not None, reply.error
        image = reply.image
        (alone,) = local.serve([GenerationRequest(**req)])  # alone: bucket 1 (ORT runs batch 1 of the export)
        if reply.bucket == alone.bucket:
            assert np.array_equal(image, alone.image), f"{req} differs from its image alone"
        else:  # the same tokens, decoded at another batch size: within one level
            assert same_image(image, alone.image), f"{req} differs from its image alone"
        if req["policy"] == "full":  # the same tokens; the decoder's rounding at batch 3 vs 1: one level
            generated = to_uint8(generate_alone.generate([req["class_id"]], seed=req["seed"]).images)[0]
            assert same_image(image, generated), f"{req} differs from varrt generate's image"
    sizes = [r.batch_size for r in replies[: len(valid)]]
    assert max(sizes) >= 2, f"no batch formed: {sizes}"
    for reply, (_, message) in zip(replies[len(valid) :], invalid):
        assert reply.status == 400 and message in reply.error and "\n" not in reply.error, reply.error

    # SIGTERM with requests in flight (the replica admits 6: two engine calls of 3): once the
    # first answer is back the others are inside the replica, and each still gets its image
    with ThreadPoolExecutor(5) as pool:
        pending = [pool.submit(ray_infer, url, GenerationRequest(class_id=c, seed=c), 300) for c in range(5)]
        first = next(iter(as_completed(pending)))
        in_flight = sum(not p.done() for p in pending)
        proc.send_signal(signal.SIGTERM)  # the command drains (deletes the app first), then shuts Ray down
        drained = [p.result(timeout=300) for p in pending]
    assert first.result().status == 200 and all(d.status == 200 and d.image is not None for d in drained), [
        (d.status, d.error) for d in drained
    ]
    assert in_flight >= 1  # the shutdown did begin with work in flight
