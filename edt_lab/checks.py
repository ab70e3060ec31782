"""Checks of arguments that the library's public functions share: each returns the value in the form the code
uses, or raises a ValueError that names the argument as the caller wrote it (`what`)."""

import json
import math
import numbers
from pathlib import Path


def single_item(value):
    """The Python number in a one-element tensor or array (tensor([3]) -> 3, tensor(1.5) -> 1.5); other values as
    they are. Duck-typed (torch's numel(), numpy's size), so that this module imports neither."""
    size = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", None)
    return value.item() if size == 1 and callable(getattr(value, "item", None)) else value


def whole_number(value, what: str) -> int:
    """A Python, numpy or one-element integer tensor value as an int. Floats are refused rather than truncated
    (3.5 is no class and no step count), and so are bools (True would silently be 1)."""
    value = single_item(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def generator_seed(value, what: str) -> int:
    """A seed for torch's generators, which take 0..2**64 - 1."""
    seed = whole_number(value, what)
    if not 0 <= seed < 2**64:
        raise ValueError(f"{what} must be an integer in 0..{2**64 - 1}, got {value}")
    return seed


def finite_number(value, what: str) -> float:
    """A real, finite number (int, float, numpy or one-element tensor) as a float; NaN, inf, bools and other
    types are refused."""
    value = single_item(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def read_json_object(path) -> dict:
    """The JSON object (a dict) in the file `path`, e.g. a config.json; ValueError naming the file otherwise."""
    try:
        value = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file, expected JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object ({{...}}), got a {type(value).__name__}")
    return value
