"""The servers tools/serve_load.py puts load on: one per ``max_queue_delay``, each behind the same
small interface (send a request, hang up mid-request, read its counters, drain and stop).

Triton: one ``TritonServer`` per delay, all in front of the one in-process service (one engine).
Ray Serve: one application per delay on one local cluster (``ray.init(num_cpus=2)``), at its own
route, each replica loading its own engine from the same (cached) export.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

from varrt.runtime.serve.batching import GenerationRequest, ImageService
from varrt.runtime.serve.client import Reply, free_ports, infer, infer_body, parse_reply, post, ray_body, ray_infer
from varrt.runtime.serve.client import wait_ready as wait_triton_ready
from varrt.runtime.serve.spec import ServiceSpec

#: what each invalid kind's error must say, per server (Ray's protocol is one image per request: a
#: list of class ids is its oversized batch)
EXPECTED = {
    "unknown class": "unknown class id",
    "unknown policy": "unknown policy",
    "top_p 0": "top_p must be in (0, 1]",
    "oversized batch": "batch-size must be <=",
    "malformed JSON": "JSON",
}
EXPECTED_RAY = {**EXPECTED, "oversized batch": "class_id must be an integer"}


def _hang_up(url: str, path: str, body: bytes) -> None:
    """Send a whole valid request, then close the connection before the answer comes."""
    parts = urlsplit(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(head + body)
        time.sleep(0.05)


class TritonTarget:
    engine = "triton (PyTriton)"
    expected = EXPECTED

    def __init__(self, service: ImageService, delay: float, drain_seconds: int) -> None:
        from varrt.runtime.serve.triton import TritonOptions, TritonServer

        http, grpc, metrics = free_ports(3)
        options = TritonOptions(
            port=http, grpc_port=grpc, metrics_port=metrics, max_queue_delay_ms=delay, drain_seconds=drain_seconds
        )
        self.service = service
        self.server = TritonServer(service, options).start()
        self.url = self.server.url
        wait_triton_ready(self.url, timeout=300)

    def send(self, payload: GenerationRequest | bytes) -> Reply:
        try:
            if isinstance(payload, bytes):
                return parse_reply(*post(self.url, "/v2/models/varrt/infer", payload))
            return infer(self.url, payload)
        except (OSError, http.client.HTTPException) as e:  # a dropped connection is a result too
            return Reply(0, f"{type(e).__name__}: {e}")

    def oversized(self, rows: int) -> bytes:
        body = {"inputs": [{"name": "class_id", "datatype": "INT64", "shape": [rows, 1], "data": [0] * rows}]}
        return json.dumps(body).encode()

    def hang_up(self, req: GenerationRequest) -> None:
        _hang_up(self.url, "/v2/models/varrt/infer", json.dumps(infer_body(req)).encode())

    def served(self) -> int:
        return self.service.stats.served

    def engine_busy(self) -> bool:
        return self.service.stats.in_flight > 0

    def counters(self) -> dict:
        """Triton's own counters (exec_count: the batches its dynamic batcher formed)."""
        with socket.create_connection(("127.0.0.1", self.server.options.ports[2]), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        names = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_exec_count",
                 "nv_inference_pending_request_count")  # fmt: skip
        return {
            name: int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            for name in names
            if line.startswith(name + '{model="varrt"')
        }

    def stop(self) -> None:
        self.server.stop()

    @staticmethod
    def close_all() -> None:
        pass


class RayTarget:
    engine = "ray (Ray Serve)"
    expected = EXPECTED_RAY
    _port: int | None = None

    def __init__(self, spec: ServiceSpec, delay: float, drain_seconds: int) -> None:
        import ray

        from varrt.runtime.serve.ray import RayOptions, run

        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        if RayTarget._port is None:
            (RayTarget._port,) = free_ports(1)
        self.name = f"varrt-{delay:g}ms"
        options = RayOptions(cpus_per_replica=1.0, batch_wait_ms=delay, drain_seconds=drain_seconds)
        self.url = run(spec, options, port=RayTarget._port, name=self.name, route_prefix=f"/{self.name}")

    def send(self, payload: GenerationRequest | bytes) -> Reply:
        try:
            return ray_infer(self.url, payload)
        except (OSError, http.client.HTTPException) as e:
            return Reply(0, f"{type(e).__name__}: {e}")

    def oversized(self, rows: int) -> bytes:
        return json.dumps({"class_id": [0] * rows}).encode()

    def hang_up(self, req: GenerationRequest) -> None:
        _hang_up(self.url, urlsplit(self.url).path, ray_body(req))

    def describe(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.url, timeout=60) as r:
            return json.loads(r.read())

    def served(self) -> int:
        return self.describe()["stats"]["served"]

    def engine_busy(self) -> bool:
        return False  # the replica is another process: the drain waits for a first answer instead

    def counters(self) -> dict:
        """The replica's service counters (Ray Serve's own metrics need its Prometheus exporter)."""
        return self.describe()["stats"]

    def stop(self) -> None:
        from varrt.runtime.serve.ray import drain

        drain(self.name)

    @staticmethod
    def close_all() -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
