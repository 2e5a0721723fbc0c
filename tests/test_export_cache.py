"""The export cache never serves a bad artifact: validation before publish, NaN/Inf, content checks
that a preserved mtime cannot fool, stale staging swept, one export per key under a lock, shared
weights, and cheap checks before any export work. Exports here reuse the components that the
session's ``tiny_artifact`` traced into the cache's pack, so each costs seconds, not minutes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, tiny_bsq_vae, tiny_source, tiny_var
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import TorchEngine
from varrt.export.artifact import (
    ArtifactError,
    DiskFullError,
    FormatError,
    file_sha256,
    parity_state,
    read_manifest,
)
from varrt.export.checkpoint import CheckpointError, load_var, save_safetensors
from varrt.export.exporter import ExportConfig
from varrt.export.infinity_checkpoint import load_bsq_vae
from varrt.export.pack import Pack
from varrt.export.staging import leftovers, sweep_folder
from varrt.runtime.artifacts import (
    ExportJob,
    ExportRequest,
    ParityError,
    checkpoint_source,
    ensure_artifact,
    exports_dir,
    graph_identity,
    provide_artifact,
    validate_parity,
)

FULL_B1 = ExportRequest(tiny_source(), ("full",), 1, ExportConfig())

#: a real export in another process, printing every step (the components come from the pack)
EXPORT = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(REPO / "tests")!r})
import torch
torch.set_num_threads(1)
from helpers import tiny_source, tiny_var, tiny_vqvae
from varrt.export.exporter import ExportConfig
from varrt.runtime.artifacts import ExportRequest, ensure_artifact
request = ExportRequest(tiny_source(), ("full",), 1, ExportConfig())
ensure_artifact(request, lambda: (tiny_var(2), tiny_vqvae()), out=Path(sys.argv[1]), say=lambda m: print(m, flush=True))
print("done", flush=True)
"""


def start_export(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", EXPORT, str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def no_load():
    raise AssertionError("the models must not be loaded")


# ------------------------------------------------------------------------------------ publish after validation
def test_a_kill_during_validation_publishes_nothing_and_the_next_export_sweeps_it(tmp_path, tiny_artifact, tiny_models):
    out = tmp_path / "art"
    proc = start_export(out)
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if line.startswith("validate:"):
            proc.send_signal(signal.SIGTERM)
            break
    assert proc.wait(timeout=60) == -signal.SIGTERM, seen
    assert "reuse transformer" in " ".join(seen)  # from the pack: no trace
    assert not out.exists(), "an unvalidated artifact was published"
    (staging,) = leftovers(out)  # SIGTERM runs no cleanup: the staging folder stays behind ...
    messages = []
    ensure_artifact(FULL_B1, lambda: tiny_models, out=out, validate=False, say=messages.append)
    assert not staging.exists() and leftovers(out) == []  # ... until the next export of it sweeps it
    assert any(m.startswith(f"removed {staging.name}") for m in messages), messages
    assert parity_state(read_manifest(out)) == "not run"
    OrtEngine(out)  # what was published verifies


def test_an_unvalidated_export_is_validated_before_it_is_reused(tmp_path, tiny_artifact, tiny_models):
    out = tmp_path / "art"
    ensure_artifact(FULL_B1, lambda: tiny_models, out=out, validate=False)
    assert read_manifest(out).validation["parity"] == {"not_run": "exported with --no-validate"}
    messages = []
    ensure_artifact(FULL_B1, no_load, out=out, validate=False, say=messages.append)
    assert messages == [f"reusing the export in {out} (not validated: exported with --no-validate)"]
    loads = []
    ensure_artifact(FULL_B1, lambda: loads.append(1) or tiny_models, out=out, say=messages.append)
    assert loads == [1] and f"validating the export in {out} (it was exported with --no-validate)" in messages
    m = read_manifest(out)
    assert parity_state(m) == "passed" and max(m.validation["parity"]["max_relative_error"].values()) <= 1e-4
    ensure_artifact(FULL_B1, no_load, out=out)  # validated now: reused as it is


class RecordingTorch(TorchEngine):
    """Eager torch that records the shape of every feed it is given."""

    def __init__(self, *models) -> None:
        super().__init__(*models)
        self.seen: dict[str, dict[str, tuple]] = {}

    def run(self, graph, feeds):
        self.seen[graph.name] = {k: tuple(v.shape) for k, v in feeds.items()}
        return super().run(graph, feeds)


def test_validation_runs_every_graph_at_a_few_rows_whatever_the_batch(tmp_path, tiny_artifact, tiny_models):
    """A batch-256 demo export validated at its own 512 rows took ONNX Runtime past 24 GB; rows
    are independent, so each graph is checked at no more than VALIDATION_ROWS of them."""
    from varrt.runtime.artifacts import VALIDATION_ROWS

    batch = 5  # 10 CFG rows
    request = ExportRequest(tiny_source(), ("full", "fastvar", "skipvar"), batch, ExportConfig())
    out = ensure_artifact(request, lambda: tiny_models, out=tmp_path / "art", validate=False)
    m = read_manifest(out)
    torch_ = RecordingTorch(*tiny_models)
    parity = validate_parity(out, torch_, m, lambda _m: None)
    assert set(torch_.seen) == {g.name for g in m.graphs}  # every graph of the artifact
    assert max(parity["max_relative_error"].values()) <= 1e-4
    assert f"at most {VALIDATION_ROWS} rows" in parity["inputs"]
    declared = OrtEngine(out, verify=False).declared_shapes  # the ONNX files' own dim names
    cut, big = set(), set()
    for g in m.graphs:
        dims = declared(g.component)
        for t in g.inputs:
            named = list(zip(t.shape, dims[t.name]))
            batch_dims = [n for n, d in named if d in ("rows", "batch")]
            want = tuple(min(n, VALIDATION_ROWS) if d in ("rows", "batch") else n for n, d in named)
            assert torch_.seen[g.name][t.name] == want, (g.name, t.name)  # only batch dims cut
            cut |= {g.name} if want != t.shape else set()
            big |= {g.name} if any(n > VALIDATION_ROWS for n in batch_dims) else set()
    assert cut == big and f"conditioner_r{2 * batch}" in big


# ------------------------------------------------------------------------------------ NaN / Inf
def poisoned_copy(tiny_artifact: Path, dst: Path) -> Path:
    """The tiny artifact with its class embedding (a conditioner weight) set to NaN in weights.bin,
    the manifest updated so that the files verify: only the numbers are wrong."""
    import onnx

    shutil.copytree(tiny_artifact, dst)
    model = onnx.load(str(dst / "conditioner.onnx"), load_external_data=False)
    (t,) = [t for t in model.graph.initializer if t.name.endswith("class_emb.weight")]
    info = {e.key: e.value for e in t.external_data}
    with open(dst / "weights.bin", "r+b") as f:
        f.seek(int(info["offset"]))
        f.write(torch.full((int(info["length"]) // 4,), float("nan")).numpy().tobytes())
    m = json.loads((dst / "manifest.json").read_text())
    m["files"]["weights.bin"]["sha256"] = file_sha256(dst / "weights.bin", use_cache=False)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_nan_in_validation_outputs_fails_naming_the_tensor_and_publishes_nothing(tmp_path, tiny_artifact, tiny_models):
    bad = poisoned_copy(tiny_artifact, tmp_path / "poisoned")

    def write(models, work, pack, say):
        for f in bad.iterdir():
            shutil.copy(f, work / f.name)
        return read_manifest(work)

    def check(models, where, manifest, say):
        return validate_parity(where, TorchEngine(*models), manifest, say)

    out = tmp_path / "art"
    job = ExportJob("k" * 64, {"test": "nan"}, lambda: tiny_models, write, check)
    with pytest.raises(ParityError, match=r"validation failed: conditioner_r2: sos has ort: \d+ NaN") as e:
        provide_artifact(job, out)
    assert "torch:" not in str(e.value).split(";")[0]  # torch's outputs were finite
    assert "\n" not in str(e.value)
    assert not out.exists() and leftovers(out) == []


def test_a_checkpoint_with_nan_or_inf_weights_is_rejected_at_load(tmp_path):
    sd = tiny_var(2).state_dict()
    sd["head.weight"] = sd["head.weight"].clone()
    sd["head.weight"][3, :5] = float("nan")
    save_safetensors(sd, tmp_path / "var.safetensors")
    with pytest.raises(
        CheckpointError, match=r"var.safetensors holds NaN/Inf weights in 1 tensor\(s\): head.weight \(5 NaN, 0 Inf\)"
    ):
        load_var(tmp_path / "var.safetensors")
    vae = {k: v.clone() for k, v in tiny_bsq_vae().state_dict().items()}
    key = next(k for k, v in vae.items() if v.is_floating_point() and v.ndim == 4)
    vae[key].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match=r"holds NaN/Inf weights in 1 tensor\(s\).*\(0 NaN, 1 Inf\)"):
        load_bsq_vae(vae)


# ------------------------------------------------------------------------------------ content checks
def test_an_overwrite_that_keeps_size_and_mtime_is_detected(tmp_path, tiny_artifact, tiny_models):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifact, out)
    OrtEngine(out)  # verified: its hashes are remembered now
    w = out / "weights.bin"
    st = w.stat()
    with open(w, "r+b") as f:
        f.seek(1 << 20)
        f.write(os.urandom(1 << 20))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (w.stat().st_size, w.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(ArtifactError, match="weights.bin does not match its sha256"):
        OrtEngine(out)
    messages = []  # the cache checks the same way before reusing, and replaces what fails
    ensure_artifact(FULL_B1, lambda: tiny_models, out=out, validate=False, say=messages.append)
    assert any(m.startswith("exporting again:") and "weights.bin does not match its sha256" in m for m in messages)
    OrtEngine(out)


def test_a_checkpoint_changed_under_its_mtime_gets_a_new_hash(tmp_path):
    f = tmp_path / "ckpt.bin"
    f.write_bytes(b"a" * 4096)
    before = file_sha256(f)
    st = f.stat()
    f.write_bytes(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256(f) != before  # a new export key: the old export is not served
    with pytest.raises(CheckpointError, match="var checkpoint not found"):
        checkpoint_source(tmp_path / "missing.pth", f)
    with pytest.raises(CheckpointError, match="is a directory; pass the checkpoint file itself"):
        checkpoint_source(tmp_path, f)


def test_an_old_format_artifact_is_refused_by_engines_and_replaced_by_the_next_export(
    tmp_path, tiny_artifact, tiny_models
):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifact, out)
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(
        FormatError, match="has artifact format 1, .* reads format 2 .*re-export it with `varrt export`"
    ):
        OrtEngine(out)
    messages = []
    ensure_artifact(FULL_B1, lambda: tiny_models, out=out, validate=False, say=messages.append)
    assert any(x.startswith(f"replacing {out}: artifact format 1") for x in messages)
    assert read_manifest(out).files["weights.bin"]["bytes"] == (out / "weights.bin").stat().st_size
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------ staging and locks
HOLD = """
import sys, time
from pathlib import Path
from varrt.export.locks import held
with held(Path(sys.argv[1]), "test"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_the_sweep_removes_only_what_no_live_export_owns(tmp_path):
    folder = tmp_path / "exports"
    dead = [folder / ".a.staging-1-x", folder / ".a.old-7", folder / ".a.abc12_yz"]  # the last: varrt 0.1's
    live = folder / ".a.b.staging-2-y"  # belongs to "a.b", whose export is alive
    for d in (*dead, live):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "weights.bin").write_bytes(b"x" * 1000)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / "a.b")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        freed = sweep_folder(folder)
        assert [d.exists() for d in dead] == [False] * 3 and live.exists() and freed >= 3000
    finally:
        holder.kill()
        holder.wait(timeout=30)
    sweep_folder(folder)
    assert not live.exists() and sorted(p.name for p in folder.iterdir() if p.is_dir()) == []


def test_two_identical_exports_at_once_do_the_work_once(tmp_path, tiny_artifact):
    out = tmp_path / "art"
    procs = [start_export(out) for _ in range(2)]
    logs = []
    for p in procs:
        text, _ = p.communicate(timeout=300)
        assert p.returncode == 0, text
        logs.append(text)
    assert sum(log.count("validate: ONNX Runtime vs torch") for log in logs) == 1, logs
    assert sum(log.count(f"reusing the export in {out}") for log in logs) == 1, logs
    assert parity_state(read_manifest(out)) == "passed"
    OrtEngine(out)
    assert leftovers(out) == [] and [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["art"]


# ------------------------------------------------------------------------------------ shared weights, varrt cache
def test_two_batch_sizes_of_one_checkpoint_store_the_weights_once(
    tmp_path, monkeypatch, capsys, tiny_artifact, tiny_models
):
    from varrt.runtime.cache import usage
    from varrt.runtime.cli import main

    pack = Pack.for_identity(graph_identity(FULL_B1.identity()), shared=True).root  # the session's
    monkeypatch.setenv("VARRT_CACHE", str(tmp_path / "cache"))
    shutil.copytree(pack, tmp_path / "cache" / "packs" / pack.name)  # a pack moves with its folder
    pack = tmp_path / "cache" / "packs" / pack.name
    arts = [
        ensure_artifact(ExportRequest(tiny_source(), ("full",), b, ExportConfig()), lambda: tiny_models, validate=False)
        for b in (1, 2)
    ]
    assert [a.parent for a in arts] == [exports_dir()] * 2 and arts[0] != arts[1]
    weights = (pack / "weights.bin").stat().st_size
    for a in arts:  # each artifact references the pack's weights and graphs: none of its own
        assert not (a / "weights.bin").exists() and not list(a.glob("*.onnx"))
        assert (a / read_manifest(a).files["weights.bin"]["path"]).resolve() == (pack / "weights.bin").resolve()
        OrtEngine(a)
    shutil.copytree(arts[0], tmp_path / "moved")  # a cache artifact does not travel alone: it says how to ship one
    with pytest.raises(ArtifactError, match=r"references its checkpoint's pack .* `varrt export --out DIR`"):
        OrtEngine(tmp_path / "moved")
    rows = {r[0]: r for r in usage().rows}
    assert rows[f"pack {pack.name}"][2] >= weights and "used by 2 artifacts" in rows[f"pack {pack.name}"][3]
    assert rows[f"pack {pack.name}"][3].startswith(f"{read_manifest(arts[0]).label}; ")  # named by its model
    assert rows["exports"][1] == 2 and rows["exports"][2] < 0.5 * weights
    # one copy of the weights, the pack's (which may hold other tests' graphs too), not two
    assert usage().total < rows[f"pack {pack.name}"][2] + 0.5 * weights
    assert main(["cache", "du"]) == 0  # results on stdout
    out = capsys.readouterr().out
    assert f"pack {pack.name}" in out and "weights stored once, used by 2" in out
    assert main(["cache", "du", "--json"]) == 0
    du = json.loads(capsys.readouterr().out)
    (row,) = [r for r in du["rows"] if r["what"] == f"pack {pack.name}"]
    assert row["bytes"] >= weights and du["total_bytes"] < row["bytes"] + 0.5 * weights
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("export ") >= 2 and "batch 2" in listed and pack.name in listed
    assert main(["cache", "list", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["entries"]
    assert sorted(e["kind"] for e in found) == ["export", "export", "pack"]
    assert [e["used_by"] for e in found if e["kind"] == "pack"] == [2]
    for argv in (["list", "--older-than", "3"], ["clean", "--older-than", "nan"]):
        assert main(["cache", *argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "--older-than" in err

    # clean: by age (creation or last reuse), then everything; a pack goes when no artifact references it
    old = time.time() - 40 * 86400
    for a in arts:
        os.utime(a / "manifest.json", (old, old))
    ensure_artifact(ExportRequest(tiny_source(), ("full",), 2, ExportConfig()), no_load, validate=False)  # reused
    (exports_dir() / ".gone.staging-1-z").mkdir()
    assert main(["cache", "clean", "--older-than", "30"]) == 0
    assert not arts[0].exists() and arts[1].exists() and pack.exists()
    assert not (exports_dir() / ".gone.staging-1-z").exists()
    assert main(["cache", "clean"]) == 0
    assert not arts[1].exists() and not pack.exists()
    assert usage().total < 0.01 * weights


# ------------------------------------------------------------------------------------ a damaged artifact
DAMAGES = {
    "garbled manifest": lambda a: (a / "manifest.json").write_bytes(os.urandom(256)),
    "manifest a JSON list": lambda a: (a / "manifest.json").write_text("[1, 2]"),
    "manifest a wrong field": lambda a: (a / "manifest.json").write_text(
        json.dumps({**json.loads((a / "manifest.json").read_text()), "graphs": [3]})
    ),
    "manifest deleted": lambda a: (a / "manifest.json").unlink(),
    "another key": lambda a: (a / "manifest.json").write_text(
        json.dumps({**json.loads((a / "manifest.json").read_text()), "export_key": "0" * 64})
    ),
    "a file at the key": lambda a: shutil.rmtree(a) or a.write_text("x"),
}


def test_a_damaged_artifact_at_its_cache_key_is_exported_again(tmp_path, monkeypatch, tiny_artifact, tiny_models):
    """Whatever sits at an export's cache key and is not that export intact is exported again, never
    refused: nobody else's artifact can live there."""
    pack = Pack.for_identity(graph_identity(FULL_B1.identity()), shared=True).root  # the session's
    monkeypatch.setenv("VARRT_CACHE", str(tmp_path / "cache"))
    shutil.copytree(pack, tmp_path / "cache" / "packs" / pack.name)
    art = ensure_artifact(FULL_B1, lambda: tiny_models, validate=False)
    for name, damage in DAMAGES.items():
        damage(art)
        messages = []
        assert ensure_artifact(FULL_B1, lambda: tiny_models, validate=False, say=messages.append) == art, name
        assert any(m.startswith(("exporting again:", f"replacing {art}:")) for m in messages), (name, messages)
        assert read_manifest(art).export_key == FULL_B1.key(), name
        OrtEngine(art)  # what is served now verifies
        assert leftovers(art) == [], name
    assert [p.name for p in exports_dir().iterdir() if not p.name.endswith(".lock")] == [art.name]


def test_a_damaged_out_artifact_is_refused_before_any_work_unless_forced(tmp_path, capsys, tiny_artifact, tiny_models):
    """An ``--out`` folder may be anyone's: a manifest that cannot be read is one line asking for
    --force, before any model is loaded; with --force it is replaced."""
    from varrt.runtime.cli import main

    out = tmp_path / "art"
    shutil.copytree(tiny_artifact, out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"holds a damaged artifact \(.*is not valid JSON.*pass --force"):
        ensure_artifact(FULL_B1, no_load, out=out)
    rc = main(["export", "--random-weights", "--model", "var-tiny-d2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].count("pass --force") == 1, err
    assert (out / "manifest.json").read_text() == "{not json" and not half_written(tmp_path)
    messages = []
    ensure_artifact(FULL_B1, lambda: tiny_models, out=out, force=True, validate=False, say=messages.append)
    assert any(m.startswith("exporting again:") for m in messages) and leftovers(out) == []
    OrtEngine(out)


def half_written(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or ".staging-" in p.name]


# ------------------------------------------------------------------------------------ cheap checks first
def test_a_bad_out_fails_before_any_export_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file; --out takes a folder"):
        ensure_artifact(FULL_B1, no_load, out=tmp_path / "file")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_text("x")
    with pytest.raises(ArtifactError, match="exists and is not a varrt artifact"):
        ensure_artifact(FULL_B1, no_load, out=tmp_path / "photos")
    locked = tmp_path / "readonly"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here: no folder that even root cannot write")
    try:
        with pytest.raises(ArtifactError, match=r"cannot write to .*readonly \(Operation not permitted\)"):
            ensure_artifact(FULL_B1, no_load, out=locked / "art")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_a_full_disk_is_one_line_that_names_the_folder_and_leaves_nothing(tmp_path, tiny_artifact, tiny_models):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a 1 MiB tmpfs here (needs root): no disk to fill")
    try:
        out = disk / "art"
        with pytest.raises(DiskFullError, match=rf"the disk is full: no space left writing {disk}/") as e:
            ensure_artifact(FULL_B1, lambda: tiny_models, out=out, validate=False)
        assert "\n" not in str(e.value)
        assert not out.exists() and leftovers(out) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ------------------------------------------------------------------------------------ the pack itself
def add_graph(path: Path, value: float) -> str:
    """A one-node graph ``y = x + w`` with ``w`` stored outside it, as the exporter writes components."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(torch.full((4096,), value).numpy(), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return f"traced {value}"


def test_the_pack_traces_once_checks_its_tensors_and_cuts_a_killed_append(tmp_path):
    pack, traced, said = Pack(tmp_path / "pack"), [], []

    def trace(path, value=1.0):
        traced.append(value)
        return add_graph(path, value)

    a = pack.component("decoder", None, trace, said.append)
    assert pack.component("decoder", None, trace, said.append) == a and traced == [1.0]  # stored: reused
    b = pack.component("transformer_layers", (0, 2), lambda p: trace(p, 2.0), said.append)
    assert (tmp_path / "pack" / "transformer_layers.0-2.onnx").exists() and b.weights_sha256 != a.weights_sha256
    w = tmp_path / "pack" / "weights.bin"
    size = w.stat().st_size
    with open(w, "ab") as f:  # what an append killed before the index was written leaves
        f.write(b"\0" * 1000)
    pack.component("decoder", None, trace, said.append)
    assert w.stat().st_size == size and traced == [1.0, 2.0]  # the tail is cut, nothing re-traced
    with open(w, "r+b") as f:  # one tensor changed in place
        f.seek(100)
        f.write(b"\x7f" * 8)
    pack.component("decoder", None, trace, said.append)
    assert any("is damaged (the tensor at byte 0 does not match its sha256); starting it again" in m for m in said)
    assert traced == [1.0, 2.0, 1.0] and not (tmp_path / "pack" / "transformer_layers.0-2.onnx").exists()
