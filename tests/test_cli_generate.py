"""``varrt generate`` end to end, and its error messages."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from varrt.runtime.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_generate_tiny_random_weights(tmp_path, capsys):
    rc, err = run_cli(
        capsys,
        "generate",
        "--random-weights",
        "--model",
        "var-tiny-d2",
        "--class",
        "207",
        "--class",
        "88",
        "--class",
        "1000",
        "--backend",
        "torch",
        "--out",
        str(tmp_path),
    )
    assert rc == 0, err
    assert "images are noise" in err
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["000.png", "001.png", "002.png"]
    img = Image.open(tmp_path / "000.png")
    assert img.mode == "RGB" and img.size == (256, 256)


def test_generate_is_reproducible(tmp_path, capsys):
    for d in ("a", "b"):
        rc, err = run_cli(
            capsys,
            "generate",
            "--random-weights",
            "--model",
            "var-tiny-d2",
            "--class",
            "5",
            "--seed",
            "3",
            "--backend",
            "torch",
            "--quiet",
            "--out",
            str(tmp_path / d),
        )
        assert rc == 0, err
    a, b = (np.asarray(Image.open(tmp_path / d / "000.png")) for d in ("a", "b"))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--class", "1001"], "unknown class id"),
        (["--class", "1", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--class", "1", "--top-k", "-5"], "top_k must be >= 0"),
        (["--class", "1", "--cfg", "-1"], "cfg must be >= 0"),
        ([], "give one or more --class"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, argv, message):
    rc, err = run_cli(
        capsys,
        "generate",
        "--random-weights",
        "--model",
        "var-tiny-d2",
        "--backend",
        "torch",
        "--out",
        str(tmp_path),
        *argv,
    )
    assert rc == 2 and message in err and "Traceback" not in err


def test_missing_checkpoint_files(tmp_path, capsys):
    rc, err = run_cli(
        capsys,
        "generate",
        "--checkpoint",
        str(tmp_path / "nope.pth"),
        "--vae",
        str(tmp_path / "vae.pth"),
        "--class",
        "1",
        "--backend",
        "torch",
        "--out",
        str(tmp_path),
    )
    assert rc == 2 and "checkpoint not found" in err
    rc, err = run_cli(capsys, "generate", "--class", "1", "--backend", "torch", "--checkpoint", "x.pth")
    assert rc == 2 and "--vae" in err


@pytest.mark.slow
def test_generate_var_d16_random_weights_smoke(tmp_path, capsys):
    """One real-size run: the released d16 architecture end to end on the CPU."""
    rc, err = run_cli(
        capsys,
        "generate",
        "--random-weights",
        "--model",
        "var-d16",
        "--class",
        "207",
        "--backend",
        "torch",
        "--top-k",
        "0",
        "--top-p",
        "1.0",
        "--out",
        str(tmp_path),
    )
    assert rc == 0, err
    img = np.asarray(Image.open(tmp_path / "000.png"))
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8 and img.std() > 0
