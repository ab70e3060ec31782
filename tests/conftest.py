"""Shared test fixtures: paths to the reference data and tiny models."""

from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def compat_case():
    """The numeric test case made with the released EDT code (see shared/reference/README.md)."""
    return torch.load(REFERENCE / "edt_compat_case.pt", weights_only=True)


@pytest.fixture(scope="session")
def manifest():
    import json

    return json.loads((REFERENCE / "official_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (more only adds waiting on a busy CPU); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
