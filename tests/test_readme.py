"""The README's commands, as written: every ``varrt`` line parses and every ``make`` target named
exists (in the suite); the ones that need no download (the demo model, random weights, plan show,
doctor) run in a fresh folder, and the first Python block runs (``-m readme``: ``make readme``, a
CI step of its own, since they export the demo model four times).

Lines that name files that are not here (official checkpoints, ``d16/``, ``my-plan.toml``) or
elide arguments (``...``) are checked by the parser alone: their flags exist and their values parse.
A line that starts a server (``varrt serve``) runs until it is stopped: under ``-m readme`` it is
started as written (its ``--port`` moved to a free one), the README's ``curl`` lines are run against
it, and it is stopped with SIGTERM; in the suite, tests/test_serve_triton.py runs the same ``curl``
against a test server.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

README = REPO / "README.md"
VARRT = Path(sys.executable).parent / "varrt"
#: flags whose value is an output (it need not exist beforehand)
OUTPUTS = {"--out", "--out-dir"}
#: the setup steps of "On an NVIDIA GPU" (a fresh venv, pip installs, a torch check): they change the
#: environment, so they are not run here; ``bash`` lines name a script of the repository
SETUP = {".", "cd", "python", "python3", "pip", "bash"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    """Every command line of the bash blocks, continuations joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                out.append(tokens)
    return out


def needs_what_is_not_here(tokens: list[str]) -> bool:
    if "..." in tokens:
        return True
    for i, t in enumerate(tokens[1:], 1):
        if tokens[i - 1] in OUTPUTS or t.startswith("-"):
            continue
        looks_like_a_path = "/" in t or re.search(r"\.(pth|safetensors|toml|json|onnx)$", t)
        if looks_like_a_path and not Path(t).exists():
            return True
    return False


def varrt_commands() -> list[list[str]]:
    return [c for c in commands() if c[0] == "varrt"]


def needs_a_gpu(tokens: list[str]) -> bool:
    """A line for the compiled GPU path ("On an NVIDIA GPU"); on a machine without CUDA it must stop
    in one line that names what is missing, and that is what is checked here."""
    if "--backend" not in tokens:
        return False
    return tokens[tokens.index("--backend") + 1] in {"trt", "torch-graph"}


def gpu_is_here() -> bool:
    import torch

    return torch.cuda.is_available()


def starts_a_server(tokens: list[str]) -> bool:
    return tokens[:2] == ["varrt", "serve"]


def curl_lines() -> list[str]:
    """The README's ``curl`` lines as written (they are run by bash: they pipe into python3)."""
    return [line for block in blocks("bash") for line in block.splitlines() if line.startswith("curl ")]


def test_readme_has_the_commands_this_test_knows():
    kinds = {c[0] for c in commands()}
    assert kinds <= {"varrt", "make", "curl", *SETUP}, kinds
    for tokens in commands():
        if tokens[0] == "bash":
            assert (REPO / tokens[1]).is_file(), f"{' '.join(tokens)}: no such script"
    runnable = [c for c in varrt_commands() if not needs_what_is_not_here(c)]
    assert len(runnable) >= 6 and len(varrt_commands()) >= 30


@pytest.mark.parametrize("tokens", varrt_commands(), ids=lambda c: " ".join(c)[:80])
def test_every_varrt_command_parses(tokens):
    from varrt.runtime.cli import build_parser

    # an elided value (``--prompt "..."``) stands for some value; elided arguments elsewhere are dropped
    argv = [
        "x" if t == "..." and prev.startswith("--") else t
        for prev, t in itertools.pairwise(tokens)
        if t != "..." or prev.startswith("--")
    ]
    build_parser().parse_args(argv)  # SystemExit (exit 2, argparse's message) fails the test


def test_make_targets_exist():
    for tokens in commands():
        if tokens[0] == "make":
            for target in tokens[1:]:
                done = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
                assert done.returncode == 0, done.stderr


@pytest.mark.readme
def test_readme_commands_that_need_no_download_run_as_written(tmp_path, isolated_cache):
    """Each in a fresh folder, sharing the session's export cache, within a time bound."""
    env = {**os.environ, "VARRT_CACHE": str(isolated_cache)}
    ran = []
    for tokens in varrt_commands():
        if needs_what_is_not_here(tokens) or starts_a_server(tokens):
            continue
        done = subprocess.run(
            [str(VARRT), *tokens[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert "Traceback" not in done.stderr
        if needs_a_gpu(tokens) and not gpu_is_here():
            # no GPU here: one clear line naming what is missing and where to read on, exit 2
            assert done.returncode == 2, f"{' '.join(tokens)}:\n{done.stderr[-3000:]}"
            (line,) = [x for x in done.stderr.splitlines() if x.strip()]
            assert "GPU" in line or "TensorRT" in line, line
            continue
        assert done.returncode == 0, f"{' '.join(tokens)}:\n{done.stderr[-3000:]}"
        ran.append(" ".join(tokens))
    assert any(c.startswith("varrt demo") for c in ran) and any(c.startswith("varrt bench") for c in ran)
    assert (tmp_path / "out" / "demo.png").exists() and (tmp_path / "out" / "001.png").exists()


@pytest.mark.readme
def test_readme_python_api_runs(tmp_path, isolated_cache):
    first, *rest = blocks("python")
    for code in rest:
        compile(code, "README.md", "exec")  # the checkpoint examples: at least valid Python
    env = {**os.environ, "VARRT_CACHE": str(isolated_cache)}
    done = subprocess.run([sys.executable, "-c", first], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "var-demo" in done.stdout and "(2, 64, 64, 3)" in done.stdout


@pytest.mark.readme
def test_readme_server_and_curl_run_as_written(tmp_path, isolated_cache):
    """The README's ``varrt serve`` line on a free port (the first start exports the demo model for
    its buckets: minutes on a CPU), its ``curl`` lines against it, then SIGTERM: a clean exit."""
    from varrt.runtime.serve.client import free_port_run, wait_ready

    (server,) = [c for c in varrt_commands() if starts_a_server(c) and not needs_what_is_not_here(c)]
    written = server[server.index("--port") + 1]
    port = str(free_port_run(3))
    argv = [str(VARRT), *server[1:]]
    argv[argv.index("--port") + 1] = port
    env = {**os.environ, "VARRT_CACHE": str(isolated_cache)}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://127.0.0.1:{port}", timeout=1200)
            lines = curl_lines()
            assert lines, "the README has no curl line for the server"
            for line in lines:
                line = line.replace(f"localhost:{written}", f"localhost:{port}")
                done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, timeout=300)
                assert done.returncode == 0, done.stderr.decode()[-2000:]
        finally:
            proc.send_signal(signal.SIGTERM)  # drains and stops
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert (tmp_path / "image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
