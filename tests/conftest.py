"""pytest fixtures; the helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, REFERENCE, need_shared

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return need_shared(FIXTURES)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return need_shared(REFERENCE)
