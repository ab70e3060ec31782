"""Sampling settings: one vocabulary, one validator, the recommended.json of a folder and the flags' names."""

import argparse
import json
import re
import subprocess
import sys

import pytest

from edt_lab.assets import asset_dir
from edt_lab.guidance import Guidance
from edt_lab.settings import (FALLBACK_SETTINGS, FLAGS, OLD_NAMES, check_setting, flag_values, guidance_of,
                              parse_amm_flag, read_recommended, resolve_settings)


def write_recommended(folder, settings: dict):
    (folder / "recommended.json").write_text(json.dumps(settings))
    return folder


def test_the_shipped_recommendation_reads_in_the_one_vocabulary():
    settings = read_recommended(asset_dir("edt_t2_digits"))
    assert set(settings) == set(FALLBACK_SETTINGS)
    assert settings["guidance_interval"] == (0, 800) and settings["amm_blocks"] == [10]
    assert guidance_of(resolve_settings(recommended=settings)) == Guidance(2.5, (0, 800), "constant", None)


@pytest.mark.parametrize("old, new", sorted(OLD_NAMES.items()))
def test_an_old_named_recommendation_is_refused_with_the_new_name(tmp_path, old, new):
    write_recommended(tmp_path, {"sampler": "ddim", old: FALLBACK_SETTINGS[new]})
    with pytest.raises(ValueError, match=re.escape(f"recommended.json: {old} is an old name: rename it {new}")):
        read_recommended(tmp_path)


@pytest.mark.parametrize("settings, message", [
    ({"guidance": 2.0}, "guidance is no sampling setting: expected one of sampler, num_inference_steps"),
    ({"sampler": "euler"}, "sampler must be one of ddpm, "),
    ({"num_inference_steps": 0}, "num_inference_steps must be at least 1, got 0"),
    ({"num_inference_steps": 2.5}, "num_inference_steps must be a whole number, got 2.5"),
    ({"guidance_scale": 0.5}, "guidance_scale must be at least 1"),
    ({"guidance_interval": [0]}, "guidance_interval must be None or (low, high)"),
    ({"guidance_interval": [800, 0]}, "guidance_interval must be None or (low, high)"),
    ({"guidance_interval": [0, 1000]}, "guidance_interval must be (low, high) with 0 <= low <= high < 1000"),
    ({"guidance_schedule": "linear"}, "guidance_schedule must be one of constant, power-cos, got 'linear'"),
    ({"guided_channels": 0}, "guided_channels must be at least 1"),
    ({"amm_blocks": "10"}, "amm_blocks must be 'preset', [] (off) or a list of block indices, got '10'"),
    ({"amm_blocks": [-1]}, "amm_blocks must not hold a negative index"),
    ({"amm_radius": 0}, "amm_radius must be null or a positive number, got 0"),
    ({"amm_scale": float("inf")}, "amm_scale must be a finite number, got inf"),
])
def test_a_bad_recommendation_names_its_file_and_setting(tmp_path, settings, message):
    write_recommended(tmp_path, settings)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'recommended.json'}: {message}")):
        read_recommended(tmp_path)


def test_no_recommendation_is_an_empty_one(tmp_path):
    assert read_recommended(tmp_path) == {}


def test_every_setting_has_one_flag_and_the_command_line_wins():
    assert set(FLAGS) == set(FALLBACK_SETTINGS) and len(set(FLAGS.values())) == len(FLAGS)
    recommended = read_recommended(asset_dir("edt_t2_digits"))
    args = argparse.Namespace(cfg=1.5, cfg_interval=[0, 999], amm="off", steps=None, sampler=None, seed=3)
    settings = resolve_settings(args, recommended)
    assert settings == {**recommended, "guidance_scale": 1.5, "guidance_interval": (0, 999), "amm_blocks": []}
    assert resolve_settings() == FALLBACK_SETTINGS
    assert flag_values(argparse.Namespace(amm="preset", cfg_schedule="power-cos", guided_channels=3)) == {
        "amm_blocks": "preset", "guidance_schedule": "power-cos", "guided_channels": 3}


@pytest.mark.parametrize("flags, message", [
    (dict(cfg=0.5), "--cfg must be at least 1 (1 = no guidance), got 0.5"),
    (dict(cfg=float("nan")), "--cfg must be a finite number, got nan"),
    (dict(cfg_interval=[800, 0]), "--cfg-interval must be None or (low, high) timesteps"),
    (dict(steps=0), "--steps must be at least 1, got 0"),
    (dict(amm="7,x"), "--amm '7,x': expected 'preset', 'off' or comma-separated block indices such as 7,10"),
    (dict(amm_radius=-2.0), "--amm-radius must be null or a positive number, got -2.0"),
    (dict(sampler="euler"), "--sampler must be one of ddpm"),
])
def test_bad_flags_are_refused_in_the_flags_words(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        flag_values(argparse.Namespace(**flags))


def test_amm_flag_and_setting_forms():
    assert parse_amm_flag("off") == [] and parse_amm_flag(" preset ") == "preset"
    assert parse_amm_flag("7,10") == [7, 10]
    assert check_setting("amm_blocks", (7, 10)) == [7, 10] and check_setting("amm_blocks", []) == []


def test_settings_import_no_torch():
    """A command's parser reads the settings' names before anything heavy is imported."""
    code = "import sys, edt_lab.settings, edt_lab.guidance; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
