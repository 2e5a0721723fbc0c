"""The bundled demo model: loads strictly, and ``varrt demo`` makes a labelled grid with ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from varrt.export.checkpoint import load_models
from varrt.runtime.cli import main
from varrt.runtime.demo import demo_model


def test_demo_model_is_bundled_and_loads():
    demo = demo_model()
    var, vqvae = load_models(demo.var, demo.vqvae)
    assert var.cfg.num_classes == len(demo.classes) == 10
    assert var.cfg.patch_nums == vqvae.cfg.patch_nums
    sizes = demo.var.stat().st_size + demo.vqvae.stat().st_size
    assert sizes < 25 * 2**20
    meta = json.loads((demo.var.parent / "demo.json").read_text())
    assert meta["metrics"]["vqvae_psnr_heldout_crops"] >= 26.0


def test_varrt_demo_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "demo.png"
    rc = main(["demo", "--per-class", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[0] > 10 * 48 and img.std() > 10
    err = capsys.readouterr().err
    assert "onnx" in err.lower() or "ort" in err


@pytest.mark.parametrize("argv", [["--per-class", "0"]])
def test_demo_errors(argv, tmp_path, capsys):
    assert main(["demo", *argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "--per-class must be >= 1" in capsys.readouterr().err
