"""``varrt export`` and ``varrt generate --backend ort`` through the command line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from varrt.runtime.cli import main


@pytest.mark.slow
def test_export_then_generate_from_the_artifact(tmp_path, capsys):
    assert main(["export", "--random-weights", "--model", "var-tiny-d2"]) == 0
    out = capsys.readouterr()
    cached = out.out.strip()
    assert "transformer_r2_n256_m256_p424_t680" in out.err
    assert main(["generate", "--artifact", cached, "--class", "3", "--quiet", "--out", str(tmp_path / "a")]) == 0
    # the same request without --artifact finds its export in the cache by hash (no second export)
    assert (
        main(["generate", "--random-weights", "--model", "var-tiny-d2", "--class", "3", "--out", str(tmp_path / "b")])
        == 0
    )
    assert "reusing the export in " + cached in capsys.readouterr().err.replace("\n", "")
    a, b = (np.asarray(Image.open(tmp_path / d / "000.png")) for d in ("a", "b"))
    assert np.array_equal(a, b)


def test_generate_batch_not_in_artifact(tmp_path, capsys):
    """ONNX Runtime runs a batch the artifact was not exported for (its sessions are symbolic); a
    graph structure the artifact lacks (FastVAR's) is refused."""
    art = tmp_path / "art"
    assert main(["export", "--random-weights", "--model", "var-tiny-d2", "--out", str(art), "--no-validate"]) == 0
    capsys.readouterr()
    rc = main(["generate", "--artifact", str(art), "--class", "3", "--class", "4", "--out", str(tmp_path / "o")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["000.png", "001.png"]
    capsys.readouterr()
    argv = ["generate", "--artifact", str(art), "--policy", "fastvar", "--class", "3", "--out", str(tmp_path / "f")]
    assert main(argv) == 2 and "was not exported" in capsys.readouterr().err
