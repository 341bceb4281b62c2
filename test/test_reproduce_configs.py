"""training/reproduce.sh: every ablation it trains, and every inference switch it runs on trained
weights, is a configuration the model accepts. A recipe switch that needs another (wide_shift needs
centred correlations, the refit's switches the head_focus fit) must be reset in the script's
validation arguments, or those rows stop at the config check an hour into a run."""
import json
import re
import shlex
from pathlib import Path

from lapose_core.cli import apply_override
from lapose_core.config import LaPoseConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = (REPO / "training" / "reproduce.sh").read_text()
RECIPE = REPO / "training" / "configs" / "tiny" / "posttrain.yaml"


def bash_array(name: str) -> list[str]:
    """The words of ``NAME=( ... )`` in the script: up to the first ``)`` outside quotes and
    comments, comments dropped, quotes honoured."""
    start = re.search(rf"^\s*{name}=\(", SCRIPT, re.M)
    assert start, f"{name}=( ... ) not found in training/reproduce.sh"
    text, quote, comment = SCRIPT[start.end():], None, False
    for end, ch in enumerate(text):
        if comment:
            comment = ch != "\n"
        elif quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (end == 0 or text[end - 1].isspace()):
            comment = True
        elif ch == ")":
            return shlex.split(text[:end], comments=True)
    raise AssertionError(f"{name}=( ... ) is not closed in training/reproduce.sh")


def settings(words: list[str]) -> list[str]:
    """The ``--set`` values among a posttrain command's arguments."""
    return [value for flag, value in zip(words, words[1:]) if flag == "--set"]


def config(overrides: list[str]) -> LaPoseConfig:
    cfg = LaPoseConfig.from_yaml(RECIPE)
    for item in overrides:
        apply_override(cfg, item)
    cfg.validate("training/reproduce.sh")
    return cfg


def test_every_validation_variant_is_a_valid_config():
    val = settings(bash_array("VAL"))
    variants = [shlex.split(v) for v in bash_array("variants")]
    assert len(variants) > 40
    configs = {words[0]: config(val + settings(words[1:])) for words in variants}
    # The inference switches each run on a trained variant's weights (run_with SRC DST KEY VALUE),
    # applied to the source's config in the script's order, for every seed suffix.
    for seed in ("", "_seed1", "_seed2"):
        for src, dst, key, value in re.findall(r'run_with "(\S+?)\$seed" "(\S+?)\$seed" (\w+) (\S+)', SCRIPT):
            cfg = configs[src + seed]
            data = json.loads(json.dumps({"model": vars(cfg.model)}))
            data["model"][key] = json.loads(shlex.split(value)[0])
            configs[dst + seed] = LaPoseConfig.from_dict({"preset": cfg.preset, **data}, f"run_with {dst}{seed}")
    # Each row carries the switches its description names, and not the recipe's later ones.
    assert not configs["val_recipe"].model.rotation_from_flow and not configs["val_recipe"].model.wide_shift
    assert configs["val_rotflow"].model.rotation_fit == "median"
    assert configs["val_halfturn"].model.rotation_fit == "focus"
    assert configs["val_halfturn"].model.translation_frame == "half_turn"
    assert configs["val_halfturn_refit_steps"].model.step_lengths == "flow"
    assert configs["val_halfturn_refit_steps_seed2"].model.fine_flow
