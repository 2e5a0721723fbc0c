"""Small clients for the two servers: Triton's KServe v2 JSON protocol (the ``varrt`` model) and the
Ray Serve deployment's JSON-in, PNG-out one; what the tests and tools/serve_load.py send.

It speaks plain HTTP (``http.client``) rather than ``tritonclient`` so that the load tool can also
send what a well-behaved client never would (malformed JSON, a dropped connection); gRPC clients
use ``tritonclient.grpc`` as usual.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from varrt.runtime.serve.batching import GenerationRequest

_DTYPES = {
    "class_id": "INT64",
    "seed": "INT64",
    "top_k": "INT64",
    "prompt": "BYTES",
    "policy": "BYTES",
    "cfg": "FP32",
    "top_p": "FP32",
    "tau": "FP32",
}


def infer_body(req: GenerationRequest, outputs: tuple[str, ...] = ("image", "error", "batch_size", "bucket")) -> dict:
    """The KServe v2 JSON body of one request (one row; the fields it leaves None are not sent)."""
    inputs = [
        {"name": name, "datatype": dtype, "shape": [1, 1], "data": [getattr(req, name)]}
        for name, dtype in _DTYPES.items()
        if getattr(req, name) is not None
    ]
    return {"inputs": inputs, "outputs": [{"name": o} for o in outputs]}


@dataclass
class Reply:
    status: int  # HTTP status
    error: str  # "" when served: Triton's error (HTTP 400) or the model's ``error`` output
    image: np.ndarray | None = None  # (H, W, 3) uint8
    batch_size: int = 0
    bucket: int = 0


def exchange(url: str, path: str, body: bytes, timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` (JSON) to ``path``: the status, the headers (lower-case names) and the body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post(url: str, path: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    status, _, payload = exchange(url, path, body, timeout)
    return status, payload


def parse_reply(status: int, payload: bytes) -> Reply:
    """A Triton response for one row: the image, or the error (Triton's or the model's)."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return Reply(status, f"not JSON: {payload[:200]!r}")
    if status != 200:
        return Reply(status, data.get("error", str(data)))
    out = {o["name"]: o for o in data["outputs"]}
    error = out.get("error", {}).get("data", [""])[0]
    reply = Reply(status, error)
    if "batch_size" in out:
        reply.batch_size, reply.bucket = int(out["batch_size"]["data"][0]), int(out["bucket"]["data"][0])
    if not error and "image" in out:
        o = out["image"]
        reply.image = np.asarray(o["data"], dtype=np.uint8).reshape(o["shape"])[0]
    return reply


def infer(url: str, req: GenerationRequest, model: str = "varrt", timeout: float = 120.0) -> Reply:
    status, payload = post(url, f"/v2/models/{model}/infer", json.dumps(infer_body(req)).encode(), timeout)
    return parse_reply(status, payload)


def ray_body(req: GenerationRequest) -> bytes:
    """The Ray deployment's JSON body of one request (the fields it leaves None are not sent)."""
    return json.dumps({k: v for k, v in req.__dict__.items() if v is not None}).encode()


def parse_ray_reply(status: int, headers: dict[str, str], payload: bytes) -> Reply:
    """A Ray deployment's answer: a PNG with the batch headers, or JSON with its error."""
    if status == 200 and headers.get("content-type") == "image/png":
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
        batch, bucket = int(headers.get("x-varrt-batch-size", 0)), int(headers.get("x-varrt-bucket", 0))
        return Reply(status, "", image, batch, bucket)
    try:
        return Reply(status, json.loads(payload).get("error", "") or f"HTTP {status}")
    except (json.JSONDecodeError, AttributeError):
        return Reply(status, f"HTTP {status}: {payload[:200]!r}")


def ray_infer(url: str, req: GenerationRequest | bytes, timeout: float = 120.0) -> Reply:
    """One request to the Ray deployment (``bytes``: a raw body, sent as it is)."""
    body = req if isinstance(req, bytes) else ray_body(req)
    return parse_ray_reply(*exchange(url, urlsplit(url).path or "/", body, timeout))


def wait_ready(url: str, timeout: float = 120.0, model: str = "varrt") -> None:
    """Until the model answers ready (Triton's /v2/models/<model>/ready), else TimeoutError."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("GET", f"/v2/models/{model}/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become ready within {timeout:.0f} s")


def free_ports(n: int) -> list[int]:
    """n free loopback ports for a test or tool server (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_run(count: int = 3) -> int:
    """The first of ``count`` consecutive free loopback ports: ``varrt serve --port P`` takes P for
    HTTP, P + 1 for gRPC and P + 2 for metrics."""
    for _ in range(50):
        base = free_ports(1)[0]
        if base + count > 65535:
            continue
        try:
            for p in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no run of {count} free loopback ports")
