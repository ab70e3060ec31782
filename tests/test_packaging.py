"""The shipped models are found in a checkout and travel inside a wheel as package data; `edt-lab --version`."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edt_lab import __version__
from edt_lab.assets import CHECKOUT_ASSETS, asset_dir
from edt_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"edt_t2_digits": "model_index.json", "digit_classifier": "config.json", "digit_autoencoder": "config.json"}


def test_checkout_finds_the_shipped_models_in_assets():
    for name, marker in SHIPPED.items():
        assert asset_dir(name) == CHECKOUT_ASSETS / name == ROOT / "assets" / name
        assert (asset_dir(name) / marker).is_file()


@pytest.mark.slow
def test_wheel_carries_the_shipped_models_and_finds_them_outside_the_checkout(tmp_path):
    """Build a wheel from a copy of the sources (offline, the installed setuptools), unpack it elsewhere and
    ask the unpacked package where its models are."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "edt_lab", source / "edt_lab", ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in SHIPPED:
        shutil.copytree(ROOT / "assets" / name, source / "assets" / name)
    (source / "assets" / "edt_t2_digits" / "extra.txt").write_text("whatever assets/ holds at build time")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("edt_lab-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for name in SHIPPED:
        expected = {f"edt_lab/resources/{name}/{p.relative_to(source / 'assets' / name).as_posix()}"
                    for p in (source / "assets" / name).rglob("*") if p.is_file()}
        assert expected <= names, sorted(expected - names)
    assert {"edt_lab/explorer/server.py", "edt_lab/commands/app.py"} <= names and "edt_lab/resources/imagenet_classes.txt" in names

    lookup = "from edt_lab.assets import asset_dir; print(asset_dir('edt_t2_digits'))"
    found = subprocess.run([sys.executable, "-c", lookup], cwd=tmp_path, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")}, timeout=60)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == tmp_path / "site" / "edt_lab" / "resources" / "edt_t2_digits"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"edt-lab {__version__}"
