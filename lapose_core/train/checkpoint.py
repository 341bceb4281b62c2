"""Crash-safe training checkpoints.

Layout of a run directory::

    <out_dir>/checkpoints/
        step_50/                one complete checkpoint
            model.safetensors   the full model state_dict (frozen parts included)
            config.json         the LaPoseConfig the model was trained with
            train_state.pt      optimizer, scheduler, step, RNG states, loss history
        step_100/
        latest                  one line: the name of the newest complete checkpoint

A checkpoint is written into a temporary directory next to its final place, every file is fsynced,
and only then is the directory renamed into place and ``latest`` replaced (both with ``os.replace``,
atomic on POSIX). A crash at any moment therefore leaves ``latest`` naming a complete checkpoint; at
worst a stale ``.tmp-*`` directory remains, which the next save removes.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lapose_core.config import ConfigError, LaPoseConfig

log = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
LATEST_FILENAME = "latest"
MODEL_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
TRAIN_STATE_FILENAME = "train_state.pt"
CHECKPOINT_FILES = (MODEL_FILENAME, CONFIG_FILENAME, TRAIN_STATE_FILENAME)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMPORARY_PREFIXES = (".tmp-", ".old-")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------------------- writing

def step_dirname(step: int) -> str:
    return f"step_{step}"


def save_checkpoint(dir: str | Path, model: torch.nn.Module, cfg: LaPoseConfig,
                    train_state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``<dir>/checkpoints/step_<N>/`` atomically, point ``latest`` at it, keep the last ``keep``.

    ``dir`` is the run directory (``cfg.train.out_dir``); ``train_state["step"]`` gives N. Returns the
    checkpoint directory. If anything fails, the previous checkpoint and ``latest`` are untouched.
    """
    if "step" not in train_state:
        raise ValueError("train_state must contain 'step' (the number of optimizer steps taken)")
    step = int(train_state["step"])
    root = Path(dir) / CHECKPOINTS_DIRNAME
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)

    final = root / step_dirname(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        state = _saveable_state_dict(model)
        save_file(state, str(tmp / MODEL_FILENAME),
                  metadata={"format": "pt", "step": str(step), "stage": cfg.train.stage})
        _fsync_file(tmp / MODEL_FILENAME)
        _write_bytes(tmp / CONFIG_FILENAME, (cfg.to_json() + "\n").encode())
        with open(tmp / TRAIN_STATE_FILENAME, "wb") as f:
            torch.save(train_state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)

    _write_bytes(root / f".tmp-{LATEST_FILENAME}", (final.name + "\n").encode())
    os.replace(root / f".tmp-{LATEST_FILENAME}", root / LATEST_FILENAME)
    _fsync_dir(root)

    _prune(root, keep=keep, protect=final)
    return final


def _saveable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state_dict as contiguous CPU tensors that share no memory.

    safetensors refuses tensors that alias each other (tied embeddings, a module registered twice).
    Each later alias is stored as its own copy, so the file still holds every state_dict key and
    loads with ``strict=True``; ``load_state_dict`` copies into the tied parameter, keeping the tie.
    """
    seen_storages: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages and tensor.numel() > 0:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (the same step saved again) is moved aside."""
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _prune(root: Path, *, keep: int, protect: Path) -> None:
    steps = sorted(_complete_step_dirs(root), key=lambda item: item[0])
    for _, path in steps[:-keep] if keep > 0 else []:
        if path != protect:
            shutil.rmtree(path, ignore_errors=True)


def _remove_stale_temporaries(root: Path) -> None:
    for path in root.iterdir():
        if path.name.startswith(_TEMPORARY_PREFIXES):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------- finding

def _complete_step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and all((path / name).is_file() for name in CHECKPOINT_FILES):
            found.append((int(match.group(1)), path))
    return found


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None if it has none.

    Follows ``checkpoints/latest``. Should ``latest`` be missing or name a directory that is gone (a
    crash between the two renames of a save), the highest complete ``step_*`` directory is used.
    """
    root = Path(out_dir) / CHECKPOINTS_DIRNAME
    latest = root / LATEST_FILENAME
    if latest.is_file():
        name = latest.read_text().strip()
        if not _STEP_DIR.match(name):
            raise CheckpointError(f"{latest}: expected the name of a step_<N> directory, got {name!r}")
        target = root / name
        if target.is_dir():
            return target
        log.warning("%s names %s, which does not exist; using the newest complete checkpoint",
                    latest, target)
    steps = _complete_step_dirs(root)
    return max(steps, key=lambda item: item[0])[1] if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint directory, a run directory or a ``checkpoints`` dir."""
    path = Path(path)
    if (path / MODEL_FILENAME).exists() or (path / TRAIN_STATE_FILENAME).exists():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint directory or a run directory, got a file")
    run_dir = path.parent if path.name == CHECKPOINTS_DIRNAME else path
    found = latest_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"{path}: holds no checkpoint (no {MODEL_FILENAME} and no "
                              f"{CHECKPOINTS_DIRNAME}/{LATEST_FILENAME})")
    return found


def _require_file(ckpt: Path, name: str) -> Path:
    file = ckpt / name
    if not file.is_file():
        raise CheckpointError(f"{file}: missing from checkpoint {ckpt}")
    return file


# ----------------------------------------------------------------------------------------- reading

def read_config(path: str | Path) -> LaPoseConfig:
    """The LaPoseConfig stored with a checkpoint (or run directory, or a config.json file)."""
    path = Path(path)
    file = path if path.is_file() else _require_file(resolve_checkpoint(path), CONFIG_FILENAME)
    try:
        return LaPoseConfig.from_json(file)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def read_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint's ``model.safetensors`` (on CPU)."""
    file = _require_file(resolve_checkpoint(path), MODEL_FILENAME)
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file (corrupt or truncated?): "
                              f"{e}") from None


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a checkpoint's ``model.safetensors`` (format, step, stage)."""
    file = _require_file(resolve_checkpoint(path), MODEL_FILENAME)
    try:
        with safe_open(str(file), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file (corrupt or truncated?): "
                              f"{e}") from None


def load_model_weights(path: str | Path, model: torch.nn.Module, *, strict: bool = True,
                       prefix: str = "") -> LaPoseConfig:
    """Load a checkpoint's weights into ``model`` and return the config they were trained with.

    ``path``: a checkpoint directory, or a run directory (follows ``latest``).
    ``prefix``: load only the stored tensors whose names start with it, with the prefix removed — e.g.
    ``prefix="tokenizer."`` loads the tokenizer part of a larger model into a standalone tokenizer.
    ``strict``: every model tensor must be present and nothing extra stored. With ``strict=False``
    missing and extra names are allowed (logged), but at least one tensor must load. A shape mismatch
    is always an error.
    """
    ckpt = resolve_checkpoint(path)
    file = ckpt / MODEL_FILENAME
    config = read_config(ckpt)
    stored = read_model_state(ckpt)
    if prefix:
        stored = {name[len(prefix):]: t for name, t in stored.items() if name.startswith(prefix)}
        if not stored:
            raise CheckpointError(f"{file}: no tensor name starts with prefix {prefix!r}")

    expected = model.state_dict()
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = [f"{name}: stored {tuple(stored[name].shape)}, model {tuple(expected[name].shape)}"
                  for name in sorted(set(stored) & set(expected))
                  if stored[name].shape != expected[name].shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch for {_listing(mismatched)}")
    if strict and missing:
        problems.append(f"missing tensors {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected tensors {_listing(unexpected)}")
    if not strict and not set(stored) & set(expected):
        problems.append("no stored tensor name matches the model")
    if problems:
        where = f" (prefix {prefix!r})" if prefix else ""
        raise CheckpointError(f"{file}{where}: does not match {type(model).__name__}: "
                              + "; ".join(problems))
    if missing or unexpected:
        log.info("%s: loaded non-strictly; %d model tensor(s) not in the file, %d stored tensor(s) "
                 "not in the model", file, len(missing), len(unexpected))
    model.load_state_dict(stored, strict=strict)
    return config


def load_train_state(path: str | Path) -> dict[str, Any]:
    """The optimizer / scheduler / step / RNG / loss-history state of a checkpoint."""
    file = _require_file(resolve_checkpoint(path), TRAIN_STATE_FILENAME)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises a variety of types for corrupt pickles and zips
        raise CheckpointError(f"{file}: cannot read training state (corrupt or truncated?): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{file}: not a training state (expected a dict with a 'step' entry)")
    return state


def config_differences(stored: LaPoseConfig, current: LaPoseConfig,
                       sections: tuple[str, ...] = ("model", "data", "train")) -> list[str]:
    """``section.field: stored -> current`` for every field that differs in the given sections."""
    a, b = stored.to_dict(), current.to_dict()
    diffs = []
    for section in sections:
        for key in sorted(set(a[section]) | set(b[section])):
            old, new = a[section].get(key), b[section].get(key)
            if _normalise(old) != _normalise(new):
                diffs.append(f"{section}.{key}: {old!r} -> {new!r}")
    return diffs


def _normalise(value: Any) -> Any:
    # JSON turns tuples into lists; compare them as equal.
    return json.loads(json.dumps(value))


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... ({len(names) - limit} more)' if len(names) > limit else ''}]"
