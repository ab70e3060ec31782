"""Shared test fixtures: the released models' facts (tests/data, see its README)."""

import json
from pathlib import Path

import pytest
import torch

from edt_lab import accel

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


def pytest_configure(config):
    config.addinivalue_line("markers", "native_bf16: needs a CPU that torch reports native bf16 for (skipped elsewhere)")


def pytest_runtest_setup(item):
    """Skip a `native_bf16` test, saying why, where this CPU lacks native bf16 (or EDT_LAB_FORCE_NO_NATIVE is set)."""
    if item.get_closest_marker("native_bf16"):
        if not accel.supports("bf16", "cpu"):
            pytest.skip(f"needs native bf16: {accel.refusal('bf16', 'cpu')}")
