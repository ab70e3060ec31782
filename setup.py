"""Build step: the shipped models in assets/ become package data of the wheel (edt_lab/resources/NAME).

assets/ at the top of the repository stays the one copy under version control; a wheel takes whatever is there
when it is built. An editable install (`pip install -e .`) copies nothing: edt_lab reads the checkout's assets/.
Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_ASSETS = ("edt_t2_digits", "digit_classifier", "digit_autoencoder")  # what edt_lab.assets.asset_dir looks up


class BuildWithAssets(build_py):
    """build_py, then a fresh copy of each shipped asset folder into the built package."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        for name in SHIPPED_ASSETS:
            source = Path(__file__).resolve().parent / "assets" / name
            if not (source / "config.json").is_file() and not (source / "model_index.json").is_file():
                raise SystemExit(f"setup.py: assets/{name} holds no model (config.json or model_index.json)")
            target = Path(self.build_lib) / "edt_lab" / "resources" / name
            shutil.rmtree(target, ignore_errors=True)  # files removed from assets/ must not linger in build/
            shutil.copytree(source, target)


setup(cmdclass={"build_py": BuildWithAssets})
