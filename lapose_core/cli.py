"""The ``lapose`` command.

Training: ``lapose train-vqvae``, ``lapose pretrain``, ``lapose posttrain`` (each takes a YAML config
from ``training/configs/``); the same command runs as one CPU process or under ``torchrun`` on many
GPUs. Benchmarks: ``lapose bench-train``, ``lapose bench-data``. Evaluation: ``lapose eval``,
``lapose diagnose``. The ROS groups (bags, replay, the node benchmark, the demo) register themselves
through the ``lapose.commands`` entry point, so this module imports no ROS code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

log = logging.getLogger("lapose")

STAGE_COMMANDS = {"train-vqvae": "vqvae", "pretrain": "pretrain", "posttrain": "posttrain"}


def load_config(args: argparse.Namespace, stage: str):
    from .config import LaPoseConfig, preset

    cfg = LaPoseConfig.from_yaml(args.config) if args.config else preset(args.preset)
    cfg.train.stage = stage
    if args.out:
        cfg.train.out_dir = args.out
    if args.max_steps is not None:
        cfg.train.max_steps = args.max_steps
    if getattr(args, "init_from", None):
        cfg.train.init_from = args.init_from
    if getattr(args, "vqvae", None):
        cfg.train.vqvae_checkpoint = args.vqvae
    if getattr(args, "finetune", None) is not None:
        cfg.train.freeze_idm = not args.finetune
    for item in args.set or []:
        apply_override(cfg, item)
    cfg.validate("command line")
    return cfg


def apply_override(cfg, item: str) -> None:
    """``section.key=value`` with the value parsed as YAML (numbers, booleans, lists)."""
    import yaml

    from .config import ConfigError, apply_fields

    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=1e-4")
    key, value = item.split("=", 1)
    section, field = key.split(".", 1)
    if section not in ("model", "data", "train"):
        raise ConfigError(f"--set {item!r}: unknown section '{section}' (model, data or train)")
    apply_fields(getattr(cfg, section), {field: yaml.safe_load(value)}, f"--set {section}")


def cmd_train(args: argparse.Namespace) -> int:
    from .train.checkpoint import latest_checkpoint, load_train_state
    from .train.stages import build_stage
    from .train.trainer import train

    cfg = load_config(args, STAGE_COMMANDS[args.command])
    done = latest_checkpoint(cfg.train.out_dir) if args.resume else None
    if done is not None and load_train_state(done)["step"] >= cfg.train.max_steps:
        # Before building the dataset (a minute of video decoding): a finished run has nothing to do.
        print(f"{cfg.train.stage}: already trained to step {cfg.train.max_steps} ({done}); nothing to do")
        return 0
    stage = build_stage(cfg, Path(args.root).resolve())
    result = train(stage, cfg, resume=args.resume, progress=not args.no_progress)
    stats = getattr(stage.dataset, "stats", None)
    if stats:
        log.info("data: %s", ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    print(f"{cfg.train.stage}: {result.final_step} steps, checkpoint {result.checkpoint}")
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from .bench_train import run_bench_train

    return run_bench_train(args)


def add_train_parser(sub, command: str) -> None:
    stage = STAGE_COMMANDS[command]
    p = sub.add_parser(command, help=f"train stage '{stage}'")
    p.add_argument("--config", help="YAML config (training/configs/*.yaml); default: --preset")
    p.add_argument("--preset", default="tiny", help="preset when no --config is given (tiny|small|paper)")
    p.add_argument("--out", help="run directory (checkpoints, TensorBoard); overrides train.out_dir")
    p.add_argument("--max-steps", type=int, help="overrides train.max_steps")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config field")
    p.add_argument("--root", default=".", help="folder that relative data paths are resolved against")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    if stage == "pretrain":
        p.add_argument("--vqvae", help="checkpoint of the trained VQ-VAE (stage 0)")
    if stage == "posttrain":
        p.add_argument("--init-from", help="pretrained checkpoint, or 'scratch' for no pretraining")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--freeze", dest="finetune", action="store_false", default=None,
                       help="keep the inverse-dynamics model frozen (default)")
        g.add_argument("--finetune", dest="finetune", action="store_true",
                       help="fine-tune the inverse-dynamics model with the pose head")
    p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lapose", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in STAGE_COMMANDS:
        add_train_parser(sub, command)
    p = sub.add_parser("bench-train", help="clips/s and peak memory of each training stage and preset")
    # The paper preset's full forward pass takes minutes per step on a CPU: measured on GPUs only
    # unless asked for.
    p.add_argument("--presets", default="tiny,small,paper" if _cuda() else "tiny,small")
    p.add_argument("--stages", default="vqvae,pretrain,posttrain")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--recompute-activations", action="store_true",
                   help="measure with train.recompute_activations (memory for compute)")
    p.set_defaults(func=cmd_bench_train)
    from .bench_data import add_parser as add_bench_data

    add_bench_data(sub)
    from .eval.cli import register as add_eval

    add_eval(sub)  # core commands register here, so a source checkout (no entry points) has them too
    for ep in sorted(entry_points(group="lapose.commands"), key=lambda e: e.name):
        if ep.name in sub.choices:  # an older install's entry point for a command now registered above
            continue
        try:
            ep.load()(sub)
        except ImportError as e:  # a group whose dependencies are missing must not break the rest
            log.debug("command group %s unavailable: %s", ep.name, e)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .config import ConfigError
    from .data.sources import DataError
    from .inference import InferenceError
    from .train.checkpoint import CheckpointError
    from .train.distributed import DistributedSetupError
    from .train.trainer import TrainError

    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, InferenceError, TrainError,
            DistributedSetupError, FileNotFoundError) as e:
        print(f"lapose {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lapose {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
