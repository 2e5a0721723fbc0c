"""The real Triton Inference Server (PyTriton's tritonserver) on loopback ports: concurrent requests
are all answered, batched by plan, each with the image it gets alone; bad requests are refused
without touching the rest; `varrt serve` gives `varrt generate`'s image over HTTP and gRPC and
stops cleanly on SIGTERM; shutdown lets in-flight requests finish."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytriton", reason="the serve extra is not installed: pip install 'varrt[serve]'")

from varrt.runtime.cli import main
from varrt.runtime.images import to_uint8
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.plan import bucket_of
from varrt.runtime.serve.batching import GenerationRequest, ImageService, Served, same_image
from varrt.runtime.serve.client import free_port_run, free_ports, infer, infer_body, parse_reply, post, wait_ready
from varrt.runtime.serve.triton import TritonOptions, TritonServer

POLICIES = ("full", "fastvar", "skipvar")


class Held(ImageService):
    """The service with a gate before each engine call, so a test can stop the server mid-request."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entered, self.hold = threading.Event(), 0.0

    def _generate(self, *args, **kwargs):
        self.entered.set()
        time.sleep(self.hold)
        return super()._generate(*args, **kwargs)


@pytest.fixture(scope="module")
def batch3_server(policy_artifact):
    """The batch-3 export of every policy behind Triton; a long queue delay so batches form on a busy machine."""
    service = Held(Pipeline.from_artifact(policy_artifact, threads=1), POLICIES)
    http, grpc, metrics = free_ports(3)
    options = TritonOptions(port=http, grpc_port=grpc, metrics_port=metrics, max_queue_delay_ms=300, drain_seconds=20)
    server = TritonServer(service, options).start()
    wait_ready(server.url, timeout=120)
    yield server
    server.stop()


def reference(service: ImageService, req: GenerationRequest) -> np.ndarray:
    """The image of ``req`` served alone (padded with copies of itself)."""
    (answer,) = service.serve([req])
    assert isinstance(answer, Served)
    return answer.image


def test_concurrent_requests_are_batched_by_plan_and_each_gets_its_own_image(batch3_server, tiny_artifact):
    server, service = batch3_server, batch3_server.service
    # mostly one plan, so that Triton's batches of up to 3 hold requests that can share a generation
    valid = [GenerationRequest(class_id=c, seed=100 + c, policy="full") for c in range(7)]
    valid += [GenerationRequest(class_id=7, seed=7, policy="fastvar"), GenerationRequest(class_id=8, policy="skipvar")]
    valid.append(GenerationRequest(class_id=2, seed=102, policy="full", top_k=50, top_p=0.9))  # own sampling group
    invalid = {
        "unknown class": (GenerationRequest(class_id=4000), "unknown class id(s) [4000]"),
        "bad policy": (GenerationRequest(class_id=1, policy="warp"), "unknown policy 'warp'"),
        "top_p 0": (GenerationRequest(class_id=1, top_p=0.0), "top_p must be in (0, 1]"),
    }
    oversized = json.dumps(
        {"inputs": [{"name": "class_id", "datatype": "INT64", "shape": [4, 1], "data": [1, 2, 3, 4]}]}
    ).encode()
    malformed = b'{"inputs": [{"name": "class_id", "datatype": '

    def send(item):
        if isinstance(item, bytes):
            return parse_reply(*post(server.url, "/v2/models/varrt/infer", item))
        return infer(server.url, item)

    items = [*valid, *(r for r, _ in invalid.values()), oversized, malformed]
    order = [items[i] for i in (0, 10, 1, 2, 11, 3, 4, 12, 5, 13, 6, 7, 14, 8, 9)]  # bad ones spread among the good
    with ThreadPoolExecutor(len(order)) as pool:
        replies = dict(zip(map(id, order), pool.map(send, order)))

    # what `varrt generate --artifact tiny_artifact --class c --seed s` computes: the same weights
    # exported for batch 1 and the full plan, one int seed (the official stream); the same tokens,
    # the decoder's rounding at batch 3 vs 1 may move a value by one level
    generate_alone = Pipeline.from_artifact(tiny_artifact, threads=1)
    for req in valid:
        reply = replies[id(req)]
        assert reply.status == 200 and reply.error == "", reply.error
        assert np.array_equal(reply.image, reference(service, req)), f"{req} differs from its image alone"
        if req.policy == "full" and req.top_k is None:
            alone = to_uint8(generate_alone.generate([req.class_id], seed=req.seed).images)[0]
            assert same_image(reply.image, alone), f"{req} differs from varrt generate's image"
    for name, (req, message) in invalid.items():
        reply = replies[id(req)]
        assert reply.image is None and message in reply.error and "\n" not in reply.error, name
    assert replies[id(oversized)].status == 400 and "batch-size must be <= 3" in replies[id(oversized)].error
    # tritonserver 2.51 answers a JSON parse error with HTTP 500 (its parser's errors are internal)
    assert replies[id(malformed)].status in (400, 500) and "parse the request JSON" in replies[id(malformed)].error
    sizes = [replies[id(r)].batch_size for r in valid]
    assert max(sizes) >= 2, f"no batch formed: {sizes}"  # Triton batched them, the service kept plans apart
    # each batch padded to the smallest bucket that holds it (ORT also runs batch 1 of the batch-3 export)
    assert service.buckets == (1, 3)
    assert all(replies[id(r)].bucket == bucket_of(replies[id(r)].batch_size, service.buckets) for r in valid)
    # the server is still serving after all that
    assert infer(server.url, valid[0]).image is not None


def test_varrt_serve_gives_varrt_generate_images_over_http_and_grpc(tiny_artifact, tmp_path):
    import tritonclient.grpc as grpcclient

    port = free_port_run(3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    varrt = Path(sys.executable).with_name("varrt")  # the installed command
    cmd = [str(varrt), "serve", "--artifact", str(tiny_artifact), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=180)
        req = GenerationRequest(class_id=3, seed=7)
        for probe in ("/v2/health/live", "/v2/health/ready", "/v2/models/varrt/ready"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", probe)
            assert conn.getresponse().status == 200, probe
            conn.close()
        # raw PNG bytes are not UTF-8, so a JSON client asks for png_base64 (gRPC gets png below)
        body = infer_body(req, outputs=("image", "png_base64", "error"))
        status, payload = post(url, "/v2/models/varrt/infer", json.dumps(body).encode())
        reply = parse_reply(status, payload)
        assert reply.status == 200 and reply.error == ""
        png64 = {o["name"]: o for o in json.loads(payload)["outputs"]}["png_base64"]["data"][0]
        from_png = np.asarray(Image.open(io.BytesIO(base64.b64decode(png64))).convert("RGB"))

        assert main(["generate", "--artifact", str(tiny_artifact), "--class", "3", "--seed", "7",
                     "--out", str(tmp_path), "--quiet", "--threads", "1"]) == 0  # fmt: skip
        generated = np.asarray(Image.open(tmp_path / "000.png").convert("RGB"))
        assert np.array_equal(reply.image, generated) and np.array_equal(from_png, generated)

        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{port + 1}")
        assert grpc.is_server_ready() and grpc.is_model_ready("varrt")
        inp = grpcclient.InferInput("class_id", [1, 1], "INT64")
        inp.set_data_from_numpy(np.array([[3]], dtype=np.int64))
        seed = grpcclient.InferInput("seed", [1, 1], "INT64")
        seed.set_data_from_numpy(np.array([[7]], dtype=np.int64))
        wanted = [grpcclient.InferRequestedOutput(name) for name in ("image", "png")]
        out = grpc.infer("varrt", [inp, seed], outputs=wanted)
        assert np.array_equal(out.as_numpy("image")[0], generated)
        png = out.as_numpy("png").reshape(-1)[0]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), generated)

        # Triton's Prometheus metrics (refreshed every couple of seconds: poll, within a bound)
        counted = 'nv_inference_request_success{model="varrt",version="1"} 2'
        deadline = time.monotonic() + 30
        while True:
            with socket.create_connection(("127.0.0.1", port + 2), timeout=10) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                metrics = b"".join(iter(lambda: s.recv(65536), b"")).decode()
            if counted in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert counted in metrics, [line for line in metrics.splitlines() if "request_success" in line]
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, log[-2000:]
    assert "serving var-tiny-d2" in log


def test_varrt_serve_refuses_bad_options_in_one_line(tiny_artifact, tmp_path, capsys):
    assert main(["serve", "--artifact", str(tmp_path)]) == 2
    assert main(["serve", "--artifact", str(tiny_artifact), "--random-weights"]) == 2
    assert main(["serve", "--artifact", str(tiny_artifact), "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("varrt serve: error: ") for line in err)
    assert "not an export directory" in err[0] and "exclude each other" in err[1] and "--max-batch" in err[2]


def test_the_readme_curl_returns_a_png(batch3_server, tmp_path):
    """The README's curl, as written there (port and class aside)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("curl ") and "/v2/models/varrt/infer" in x)
    line = line.replace("localhost:8000", batch3_server.url.removeprefix("http://"))
    out = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    png = next(tmp_path.glob("*.png"))
    assert Image.open(png).size[0] > 0


def test_stop_drains_in_flight_requests(batch3_server):
    """Last in this file: it stops the module's server (its fixture's stop is then a no-op)."""
    server, service = batch3_server, batch3_server.service
    service.hold = 3.0  # the request below is inside the engine call when stop() begins
    service.entered.clear()
    req = GenerationRequest(class_id=6, seed=6)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(infer, server.url, req)
        assert service.entered.wait(60)
        server.stop()
        reply = pending.result(timeout=120)
    assert reply.status == 200 and reply.image is not None, reply.error
    with pytest.raises(OSError):  # and the port is closed
        socket.create_connection(("127.0.0.1", server.options.port), timeout=2).close()
