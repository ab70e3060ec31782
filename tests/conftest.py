"""Shared test fixtures: the released models' facts (tests/data, see its README)."""

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def compat_case():
    """The numeric test case made with the released EDT code."""
    return torch.load(DATA / "edt_compat_case.pt", weights_only=True)


@pytest.fixture(scope="session")
def manifest():
    """Every released model's state-dict keys and shapes, parameter counts and cost."""
    return json.loads((DATA / "official_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (more only adds waiting on a busy CPU); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
