"""The tutorials run under nbval (`--nbval-lax`): each cell executes its notebook's code, minutes in all, so every
notebook item is in the slow tier that `pytest -m "not slow"` leaves out."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
