"""Try the command line with bad inputs and faults, as a new user and a fault tester would, and
write what each gets into docs/errors.md: ``python tools/bad_inputs.py [--out docs/errors.md]``.

Every case runs ``varrt`` in a fresh process (its own export cache), records the exit code, the
first line of stderr, whether a traceback was printed, and anything half-written it left (temporary
files, or files where nothing should have been written). As root it mounts two small tmpfs: a
read-only one and a full one (real ENOSPC); otherwise those cases use a chmod 555 folder and are
skipped. The tests (tests/test_cli_errors.py) check one case of each class; this tool lists them all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from varrt.runtime.outputs import write_files

REPO = Path(__file__).resolve().parents[1]
CASE_TIMEOUT = 1800  # seconds; a case that runs longer is recorded as timed out


@dataclass
class Case:
    label: str
    argv: list[str]
    ok: bool = False  # expected to succeed (a silent ignore that is now honoured, or a fixed command)
    watch: str | None = None  # a path that must not exist afterwards (nothing half-written)


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    )


def fixtures(root: Path) -> dict[str, Path]:
    """The bad files and folders the cases point at."""
    import torch

    from varrt.export.checkpoint import read_metadata, read_state_dict, save_safetensors
    from varrt.runtime.demo import demo_model

    f = {"root": root}
    (root / "a-file.txt").write_text("not a folder\n")
    f["file"] = root / "a-file.txt"
    f["ro"] = root / "read-only"
    if mount_tmpfs(f["ro"], "ro,size=64k"):
        f["ro_kind"] = Path("read-only tmpfs")
    else:
        f["ro"].chmod(0o555)
        f["ro_kind"] = Path("chmod 555 folder")
    f["full"] = root / "full-disk"
    if mount_tmpfs(f["full"], "size=64k"):
        try:
            with open(f["full"] / "filler", "wb") as out:
                while True:
                    out.write(b"\0" * 4096)
                    out.flush()
        except OSError:
            pass  # full
    else:
        f.pop("full")
    (root / "ckpt-dir").mkdir()
    f["dir"] = root / "ckpt-dir"
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage.pth").write_bytes(os.urandom(4096))
    demo = demo_model()
    sd = read_state_dict(demo.var)
    sd = {k: v.clone() for k, v in sd.items()}
    head = next(k for k in sd if k.startswith("head.") and k.endswith("weight"))
    sd[head] = torch.full_like(sd[head], float("nan"))
    save_safetensors(sd, root / "nan-var.safetensors", read_metadata(demo.var))
    f["demo_var"], f["demo_vae"], f["nan_var"] = demo.var, demo.vqvae, root / "nan-var.safetensors"
    (root / "corrupt.onnx").write_bytes(b"\x08\x07\x12\x04" + os.urandom(512))
    (root / "empty.onnx").write_bytes(b"")
    (root / "not-artifact").mkdir()
    (root / "not-artifact" / "notes.txt").write_text("x")
    (root / "bad-manifest").mkdir()
    (root / "bad-manifest" / "manifest.json").write_text("{not json")
    plans = {
        "budget-abc.json": {"name": "p", "scales": [{}] * 6 + [{"budget": "abc", "restore": "nearest"}]},
        "budget-float.json": {"name": "p", "scales": [{}] * 6 + [{"budget": 72.5, "restore": "nearest"}]},
        "budget-true.json": {"name": "p", "scales": [{}] * 6 + [{"budget": True, "restore": "nearest"}]},
        "budget-zero.json": {"name": "p", "scales": [{}] * 6 + [{"budget": 0, "restore": "nearest"}]},
        "top-list.json": [{"budget": 4}],
        "scales-int.json": {"name": "p", "scales": 7},
        "scale-int.json": {"name": "p", "scales": [1, 2, 3, 4, 5, 6, 7]},
        "run-no.json": {"name": "p", "scales": [{}] * 6 + [{"run": "no"}]},
        "cfg-maybe.json": {"name": "p", "scales": [{}] * 6 + [{"cfg": "maybe"}]},
        "layers-str.json": {"name": "p", "scales": [{}] * 6 + [{"layers": "1,2"}]},
        "six-scales.json": {"name": "p", "scales": [{}] * 6},
        "unknown-field.json": {"name": "p", "scales": [{}] * 6 + [{"bugdet": 4}]},
        "name-int.json": {"name": 5, "scales": [{}] * 7},
    }
    for name, data in plans.items():
        (root / name).write_text(json.dumps(data))
        f[name] = root / name
    (root / "not-json.json").write_text("{ scales: [")
    (root / "bad.toml").write_text("scales = [ {budget = }")
    (root / "plan.txt").write_text("{}")
    for name in ("not-json.json", "bad.toml", "plan.txt"):
        f[name] = root / name
    return f


def cases(f: dict[str, Path]) -> list[Case]:
    from varrt.runtime.demo import demo_model

    o = f["root"] / "out"
    s = lambda p: str(p)  # noqa: E731
    gen = ["generate", "--class", "1", "--backend", "torch"]
    n = len(demo_model().classes)
    c = [
        # --- outputs
        Case("--out is a file", [*gen, "--out", s(f["file"])]),
        Case(f"--out in a {f['ro_kind']}", [*gen, "--out", s(f["ro"] / "imgs")]),
        Case("--out under a file", [*gen, "--out", s(f["file"] / "imgs")]),
        Case("demo --out an existing folder", ["demo", "--per-class", "1", "--out", s(f["root"])]),
        Case(f"demo --out in a {f['ro_kind']}", ["demo", "--per-class", "1", "--out", s(f["ro"] / "d.png")]),
        Case(
            "demo --out not a .png", ["demo", "--per-class", "1", "--out", s(o / "demo.jpg")], watch=s(o / "demo.jpg")
        ),
        Case("eval --out a folder", ["eval", "--seeds", "1", "--out", s(f["root"])]),
        Case("bench --out-dir a file", ["bench", "--out-dir", s(f["file"]), "--repeat", "1"]),
        Case("export --out a file", ["export", "--out", s(f["file"])]),
        # --- model files
        Case("--checkpoint a folder", [*gen, "--checkpoint", s(f["dir"]), "--vae", s(f["demo_vae"])]),
        Case("--vae a folder", [*gen, "--checkpoint", s(f["demo_var"]), "--vae", s(f["dir"])]),
        Case("--checkpoint missing", [*gen, "--checkpoint", s(f["root"] / "nope.pth"), "--vae", s(f["demo_vae"])]),
        Case("--checkpoint without --vae", [*gen, "--checkpoint", s(f["demo_var"])]),
        Case("--checkpoint empty file", [*gen, "--checkpoint", s(f["root"] / "empty.pth"), "--vae", s(f["demo_vae"])]),
        Case("--checkpoint garbage", [*gen, "--checkpoint", s(f["root"] / "garbage.pth"), "--vae", s(f["demo_vae"])]),
        Case("--checkpoint and --vae swapped", [*gen, "--checkpoint", s(f["demo_vae"]), "--vae", s(f["demo_var"])]),
        Case("checkpoint with NaN weights", [*gen, "--checkpoint", s(f["nan_var"]), "--vae", s(f["demo_vae"])]),
        Case(
            "checkpoint with NaN weights (ort)",
            ["generate", "--class", "1", "--checkpoint", s(f["nan_var"]), "--vae", s(f["demo_vae"])],
        ),
        Case("--model without --random-weights", [*gen, "--model", "var-d20"]),
        Case("--random-weights --model unknown", [*gen, "--random-weights", "--model", "var-d99"]),
        Case("--random-weights with --checkpoint", [*gen, "--random-weights", "--checkpoint", s(f["demo_var"])]),
        # --- plan files
        *(
            Case(f"plan file: {name}", [*gen, "--plan", s(f[name])])
            for name in (
                "budget-abc.json",
                "budget-float.json",
                "budget-true.json",
                "budget-zero.json",
                "top-list.json",
                "scales-int.json",
                "scale-int.json",
                "run-no.json",
                "cfg-maybe.json",
                "layers-str.json",
                "six-scales.json",
                "unknown-field.json",
                "name-int.json",
                "not-json.json",
                "bad.toml",
                "plan.txt",
            )
        ),
        Case("plan file missing", [*gen, "--plan", s(f["root"] / "nope.json")]),
        Case("--policy and --plan together", [*gen, "--policy", "fastvar", "--plan", s(f["six-scales.json"])]),
        # --- policies
        Case("--policy unknown", [*gen, "--policy", "turbo"]),
        Case("--policy bad option value", [*gen, "--policy", "fastvar:keep=2"]),
        Case("--policy unknown option", [*gen, "--policy", "fastvar:bogus=1"]),
        Case("--policy malformed", [*gen, "--policy", "fastvar:keep"]),
        # --- numbers
        Case("--cfg nan", [*gen, "--cfg", "nan"]),
        Case("--cfg inf", [*gen, "--cfg", "inf"]),
        Case("--cfg -1", [*gen, "--cfg", "-1"]),
        Case("--top-p 0", [*gen, "--top-p", "0"]),
        Case("--top-p nan", [*gen, "--top-p", "nan"]),
        Case("--top-k -5", [*gen, "--top-k", "-5"]),
        Case("--threads -4", [*gen, "--threads", "-4"]),
        Case("--threads 0", [*gen, "--threads", "0"]),
        Case("--seed -1", [*gen, "--seed", "-1"]),
        Case("--batch 0", ["generate", "--batch", "0", "--backend", "torch"]),
        Case("--class and --batch", [*gen, "--batch", "2"]),
        Case(
            f"--class {n + 1} (the demo has {n} classes; {n} is the null class)",
            ["generate", "--class", str(n + 1), "--backend", "torch"],
        ),
        Case("--class -1", ["generate", "--class", "-1", "--backend", "torch"]),
        Case("no --class", ["generate", "--backend", "torch"]),
        Case("--cfg abc (argparse)", [*gen, "--cfg", "abc"]),
        Case("demo --per-class 0", ["demo", "--per-class", "0"]),
        Case("eval --seeds 0", ["eval", "--seeds", "0"]),
        Case("eval --seeds -3", ["eval", "--seeds", "-3"]),
        Case("eval --random-weights", ["eval", "--random-weights"]),
        Case("bench --repeat 0", ["bench", "--repeat", "0"]),
        Case("bench --backends nope", ["bench", "--backends", "nope"]),
        Case("export --batch 0", ["export", "--batch", "0"]),
        Case("export --opset 12", ["export", "--opset", "12"]),
        Case("export --out a damaged artifact", ["export", "--out", s(f["root"] / "bad-manifest")]),
        Case("export --out a non-artifact folder", ["export", "--out", s(f["root"] / "not-artifact")]),
        Case("cache clean --older-than -1", ["cache", "clean", "--older-than", "-1"]),
        Case("cache list --older-than 3", ["cache", "list", "--older-than", "3"]),
        # --- backends and artifacts
        Case("--artifact not an artifact", ["generate", "--class", "1", "--artifact", s(f["root"] / "not-artifact")]),
        Case("--artifact missing", ["generate", "--class", "1", "--artifact", s(f["root"] / "nope")]),
        Case("--artifact with --backend torch", [*gen, "--artifact", s(f["root"] / "not-artifact")]),
        Case(
            "--artifact with --checkpoint",
            ["generate", "--class", "1", "--artifact", s(f["root"]), "--checkpoint", "x"],
        ),
        Case("--providers CUDA (CPU build)", ["generate", "--class", "1", "--providers", "CUDAExecutionProvider"]),
        Case("demo --backend trt (no TensorRT)", ["demo", "--per-class", "1", "--backend", "trt"]),
        Case("demo --backend torch-graph (no GPU)", ["demo", "--per-class", "1", "--backend", "torch-graph"]),
        Case("build without TensorRT", ["build", s(f["root"] / "not-artifact")]),
        Case("compare on a folder", ["compare", s(f["root"] / "not-artifact")]),
        # --- inspect, plan show
        Case("inspect corrupt .onnx", ["inspect", s(f["root"] / "corrupt.onnx")]),
        Case("inspect empty .onnx", ["inspect", s(f["root"] / "empty.onnx")]),
        Case("inspect missing .onnx", ["inspect", s(f["root"] / "nope.onnx")]),
        Case("inspect a non-artifact folder", ["inspect", s(f["root"] / "not-artifact")]),
        Case("inspect a damaged manifest", ["inspect", s(f["root"] / "bad-manifest")]),
        Case("plan show unknown policy", ["plan", "show", "turbo"]),
        Case("plan show unknown model", ["plan", "show", "fastvar", "--model", "var-d99"]),
        Case("plan show bad plan file", ["plan", "show", s(f["budget-abc.json"])]),
        Case("plan show --pn 5M (Infinity)", ["plan", "show", "fastvar", "--model", "infinity-2b", "--pn", "5M"]),
        # --- Infinity
        Case("Infinity without --text-encoder", ["generate", "--model", "infinity-2b", "--prompt", "a cat"]),
        Case(
            "Infinity --text-encoder missing",
            ["generate", "--model", "infinity-2b", "--random-weights", "--prompt", "a", "--text-encoder", "nope/"],
        ),
        Case(
            "Infinity --h-div-w 0",
            ["generate", "--model", "infinity-2b", "--prompt", "a", "--text-encoder", s(f["dir"]), "--h-div-w", "0"],
        ),
        Case("eval on Infinity", ["eval", "--model", "infinity-2b", "--checkpoint", "x", "--vae", "y"]),
        # --- things that used to fail or be ignored, now run
        Case("plan show (the demo model by default)", ["plan", "show", "fastvar"], ok=True),
        Case("varrt --version", ["--version"], ok=True),
        Case(
            "bench --policy fastvar (README), tiny settings",
            [
                "bench",
                "--policy",
                "fastvar",
                "--repeat",
                "1",
                "--warmup",
                "0",
                "--fidelity-seeds",
                "1",
                "--out-dir",
                s(o / "bench"),
            ],
            ok=True,
        ),
    ]
    if "full" in f:
        c.append(Case("--out on a full disk (tmpfs)", [*gen, "--out", s(f["full"] / "imgs")]))
        c.append(
            Case("demo --out on a full disk (tmpfs)", ["demo", "--per-class", "1", "--out", s(f["full"] / "d.png")])
        )
    return c


def run(case: Case, cache: Path, scratch: Path) -> dict:
    exe = shutil.which("varrt") or str(Path(sys.executable).parent / "varrt")
    env = {**os.environ, "VARRT_CACHE": str(cache), "COLUMNS": "200"}
    before = {p for p in scratch.rglob("*")}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [exe, *case.argv], capture_output=True, text=True, env=env, cwd=scratch, timeout=CASE_TIMEOUT
        )
    except subprocess.TimeoutExpired as e:  # a loaded machine: record the case, keep going
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        p = subprocess.CompletedProcess(e.cmd, f"timeout after {CASE_TIMEOUT} s", out, err)
    seconds = time.perf_counter() - t0
    after = {q for q in scratch.rglob("*") if not q.is_relative_to(scratch / "out")}
    leftovers = sorted(str(q.relative_to(scratch)) for q in after - before if ".tmp" in q.name or q.suffix == ".png")
    if case.watch and Path(case.watch).exists():
        leftovers.append(case.watch)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    errors = [line for line in err if "error:" in line]
    message = errors[-1] if errors else (err[-1] if err else p.stdout.strip().splitlines()[0] if p.stdout else "")
    return {
        "case": case.label,
        "command": "varrt " + " ".join(a.replace(str(scratch), "$TMP").replace(str(REPO), "<repo>") for a in case.argv),
        "exit": p.returncode,
        "message": message.replace(str(scratch), "$TMP").replace(str(REPO), "<repo>"),
        "traceback": "Traceback" in p.stderr,
        "leftovers": leftovers,
        "expected_ok": case.ok,
        "seconds": round(seconds, 1),
    }


def write_markdown(rows: list[dict], out: Path, notes: str) -> None:
    bad = [r for r in rows if r["traceback"] or r["leftovers"] or (r["exit"] == 0) != r["expected_ok"]]
    lines = [
        "# Bad inputs and faults, and what each gets",
        "",
        "Written by `python tools/bad_inputs.py` (every case a fresh `varrt` process with its own export cache;",
        f"{notes}). Exit 2 is a user error reported in one line; a case marked *runs* is one that used to fail",
        "or be ignored and now works. `tests/test_cli_errors.py` checks one case of each class (exit code, one",
        "line, no traceback, nothing half-written).",
        "",
        f"{len(rows)} cases; {len(bad)} with a traceback, a leftover or an unexpected exit code.",
        "",
        "| # | input | command | exit | what it gets |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        msg = r["message"].replace("|", "\\|")
        flags = (" **traceback**" if r["traceback"] else "") + (
            f" **left {', '.join(r['leftovers'])}**" if r["leftovers"] else ""
        )
        cmd = r["command"].replace("|", "\\|")
        exit_ = f"{r['exit']} (runs)" if r["expected_ok"] and r["exit"] == 0 else str(r["exit"])
        lines.append(f"| {i} | {r['case']} | `{cmd}` | {exit_} | {msg}{flags} |")
    text = "\n".join(lines) + "\n"
    write_files([(out, lambda tmp: tmp.write_text(text))])  # a temporary name, then renamed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "errors.md")
    ap.add_argument("--only", help="run the cases whose label contains this text")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="varrt-bad-inputs-"))
    cache = Path(tempfile.mkdtemp(prefix="varrt-bad-inputs-cache-"))
    f = fixtures(scratch)
    todo = [c for c in cases(f) if not args.only or args.only in c.label]
    rows = []
    try:
        for c in todo:
            rows.append(run(c, cache, scratch))
            r = rows[-1]
            print(
                f"{r['exit']:>3} {r['seconds']:>6}s {'TB ' if r['traceback'] else ''}{r['case']}: {r['message'][:150]}"
            )
    finally:
        for m in ("read-only", "full-disk"):
            subprocess.run(["umount", str(scratch / m)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    if not args.only:
        import platform

        who = "root" if os.geteuid() == 0 else "a user"
        notes = f"run on {platform.platform()}, Python {platform.python_version()}, as {who}"
        write_markdown(rows, args.out, notes)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
