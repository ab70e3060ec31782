"""The command-line checks the benchmarks share, so that a bad option is one line and exit code 2 (with
`edt_lab.cli.OneLineParser` and `run_script`) before any sampling, training or measuring: argparse types for
counts, numbers, samplers and AMM settings, and the checks that need the device or the loaded model.

Torch and edt_lab's sampling code are imported only where a check needs them: gpu_check.py's parent process
stays light."""

import argparse


def at_least(minimum, kind=int):
    """An argparse type: a number (`kind`: int or float) no smaller than `minimum`."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value < float("inf"):  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected {noun} >= {minimum}, got {text!r}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def sampler_steps(text: str) -> tuple[str, int]:
    """An argparse type: "SAMPLER:STEPS" (dpm:25) -> (sampler, steps), a known sampler and as many steps as its
    schedule allows."""
    from edt_lab.pipeline import make_scheduler
    from edt_lab.settings import SAMPLERS

    name, _, steps = text.partition(":")
    if name not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"expected SAMPLER:STEPS with a sampler of {', '.join(SAMPLERS)}, "
                                         f"got {text!r}")
    last = make_scheduler(name).config.num_train_timesteps
    if not steps.isdigit() or not 1 <= int(steps) <= last:
        raise argparse.ArgumentTypeError(f"expected SAMPLER:STEPS with 1 to {last} steps, got {text!r}")
    return name, int(steps)


def amm_setting(text: str) -> str:
    """An argparse type: an AMM setting, 'preset', 'off' or block indices such as 7,10
    (edt_lab.settings.parse_amm_flag); whether the blocks exist is `check_amm_blocks`'s, once the model is loaded."""
    from edt_lab.settings import parse_amm_flag

    try:
        parse_amm_flag(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'preset', 'off' or comma-separated block indices such as 7,10, "
                                         f"got {text!r}") from None
    return text


def check_amm_blocks(parser, values, num_blocks: int, option: str = "--amm") -> None:
    """Refuse (parser.error) an AMM setting among `values` that names a block the model lacks."""
    from edt_lab.settings import parse_amm_flag

    for value in values:
        blocks = parse_amm_flag(value)
        bad = [b for b in blocks if not 0 <= b < num_blocks] if isinstance(blocks, list) else []
        if bad:
            parser.error(f"{option} {value}: block {bad[0]} is out of range: this model has blocks "
                         f"0..{num_blocks - 1}")


def check_device(parser, device: str) -> None:
    """Refuse (parser.error) a --device that `edt_lab.devices.process_device` refuses, e.g. cuda without CUDA."""
    from edt_lab.devices import process_device

    try:
        process_device(device)
    except ValueError as error:
        parser.error(str(error))
