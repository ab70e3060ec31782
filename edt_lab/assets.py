"""Where the models shipped with edt-lab live: the default digits model, the digit classifier and the digit autoencoder
(and where `edt-lab eval` looks for the Inception weights a user puts there).

A checkout keeps them in assets/ at the top of the repository, the one copy under version control (an editable
install reads them there). A wheel carries them as package data, edt_lab/resources/NAME, copied from assets/
when the wheel is built (setup.py).
"""

from importlib import resources
from pathlib import Path

CHECKOUT_ASSETS = Path(__file__).resolve().parent.parent / "assets"
INCEPTION_FILE = "inception-2015-12-05.pt"  # the TorchScript Inception-v3 of StyleGAN2-ADA's metrics, not shipped
DEFAULT_INCEPTION_PATH = CHECKOUT_ASSETS / INCEPTION_FILE


def asset_dir(name: str) -> Path:
    """The folder of the shipped asset `name` (e.g. "edt_t2_digits"): the installed package's copy, else the
    checkout's assets/NAME (which may not exist: callers say what is missing)."""
    packaged = resources.files("edt_lab") / "resources" / name
    return Path(str(packaged)) if packaged.is_dir() else CHECKOUT_ASSETS / name
