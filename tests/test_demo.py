"""The bundled demo model: loads strictly, and ``varrt demo`` makes a labelled grid with ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from varrt.export.checkpoint import load_models
from varrt.export.configs import PATCH_NUMS_256
from varrt.runtime.cli import main
from varrt.runtime.demo import demo_model


def test_demo_model_is_bundled_and_loads():
    demo = demo_model()
    var, vqvae = load_models(demo.var, demo.vqvae)
    assert var.cfg.num_classes == len(demo.classes) == 32
    assert var.cfg.patch_nums == vqvae.cfg.patch_nums == PATCH_NUMS_256  # the released schedule
    assert vqvae.cfg.image_size == 64
    sizes = demo.var.stat().st_size + demo.vqvae.stat().st_size
    assert sizes < 25 * 2**20
    meta = json.loads((demo.var.parent / "demo.json").read_text())
    assert meta["sampling"] == demo.sampling == {k: meta["recipe"][k] for k in ("cfg", "top_k", "top_p")}
    m = demo.metrics
    assert m["vqvae_psnr_heldout_renders"] >= 28.0
    assert m["class_consistency_demo_sampling"] >= 0.9 > m["class_consistency_chance"]
    assert [s["side"] for s in m["scale_confidence"]] == list(PATCH_NUMS_256)


@pytest.mark.slow
def test_varrt_demo_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "demo.png"
    rc = main(["demo", "--per-class", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[0] > 32 * 64 and img.std() > 10
    err = capsys.readouterr().err
    assert "onnx" in err.lower() or "ort" in err


@pytest.mark.parametrize("argv", [["--per-class", "0"]])
def test_demo_errors(argv, tmp_path, capsys):
    assert main(["demo", *argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "--per-class must be >= 1" in capsys.readouterr().err
