"""The training loop shared by the LA-Pose stages (VQ-VAE, latent action pretraining, pose training).

A stage hands over a model whose ``forward(batch)`` returns ``(loss, scalars)`` and a dataset of
dict-of-tensor samples; the loop owns everything else: AdamW with warm-up + cosine decay, gradient
clipping, bf16 autocast on CUDA, DistributedDataParallel under torchrun, TensorBoard / JSONL / tqdm
logging and crash-safe checkpoints.

Reproducibility is by construction rather than by bookkeeping. Step k (counted from 1) trains on the
samples at positions ``[(k-1)*G, k*G)`` of an endless stream of seeded per-epoch permutations of the
dataset (G is the global batch, world size x batch size), and every rank reseeds its random number
generators from ``(seed, k, rank)`` before the step. What step k does thus depends on the seed, k
and the weights only, so resuming from a checkpoint reproduces the uninterrupted run bit for bit on
CPU, and W processes with batch B see exactly the samples one process with batch W*B would.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from lapose_core.config import ConfigError, LaPoseConfig, TrainConfig
from lapose_core.train.checkpoint import (CHECKPOINTS_DIRNAME, CONFIG_FILENAME, TRAIN_STATE_FILENAME,
                                          CheckpointError, config_differences, latest_checkpoint,
                                          load_model_weights, load_train_state, read_config,
                                          save_checkpoint, step_dirname)
from lapose_core.train.distributed import (DistributedContext, all_ranks_agree, mean_over_ranks,
                                           setup_distributed, teardown_distributed, unwrap_model,
                                           wrap_model)

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tb"

# Independent random streams derived from the one configured seed.
_DATA_STREAM = 0
_STEP_STREAM = 1


@runtime_checkable
class Stage(Protocol):
    """What a training stage provides to :func:`train`.

    ``model.forward(batch: dict[str, Tensor]) -> (loss, scalars)``; the whole model is checkpointed,
    only its parameters with ``requires_grad`` are optimised (the others are frozen parts).
    ``dataset[i]`` is a dict of tensors and must depend on ``i`` only. A stage may also set
    ``find_unused_parameters = True`` when some trainable parameters get no gradient in a step;
    DistributedDataParallel then looks for them (at some cost).
    """

    name: str
    model: torch.nn.Module
    dataset: Dataset

    def scalars(self) -> dict[str, float]:
        """Extra values logged at each log step (rank 0 only)."""
        ...

    def on_step_end(self, step: int) -> None:
        """Called after optimizer step ``step`` (counted from 1), on every rank."""
        ...


@dataclass
class TrainResult:
    out_dir: Path
    final_step: int
    losses: list[float] = field(default_factory=list)  # loss of every step 1..final_step (rank mean)
    checkpoint: Path | None = None


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why and where."""


class NonFiniteLossError(TrainError):
    """The loss (or gradient norm) of a step is NaN or infinite; the run stopped before that update."""


# ----------------------------------------------------------------------------------- schedule

def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of ``train.lr`` for the optimizer step with 0-based index ``step``.

    Linear warm-up reaching the full rate at the last warm-up step, then a half cosine that reaches
    ``min_lr_ratio`` exactly at the last step (``max_steps - 1``).
    """
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    decay_steps = max(1, train.max_steps - 1 - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.min_lr_ratio + (1.0 - train.min_lr_ratio) * cosine


def learning_rate(step: int, train: TrainConfig) -> float:
    """The learning rate of the optimizer step with 0-based index ``step``."""
    return train.lr * lr_factor(step, train)


def build_optimizer(model: torch.nn.Module, train: TrainConfig,
                    device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, vectors (biases, norm gains) do not."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise TrainError(f"{type(model).__name__} has no parameter with requires_grad=True to train")
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), fused=fused)


def _apply_current_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: LambdaLR,
                                   train: TrainConfig) -> None:
    """After loading a checkpoint, make the configured rates, betas and decay take effect.

    ``Optimizer.load_state_dict`` restores the stored hyperparameters; a resumed run should follow
    the current config instead (identical values when nothing changed, so resume stays exact).
    """
    scheduler.base_lrs = [train.lr for _ in optimizer.param_groups]
    decays = [train.weight_decay, 0.0]
    for group, decay in zip(optimizer.param_groups, decays):
        group["initial_lr"] = train.lr
        group["betas"] = tuple(train.betas)
        group["weight_decay"] = decay
        group["lr"] = train.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# ----------------------------------------------------------------------------------- data order

def derive_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from a tuple of integers (stable across processes and platforms)."""
    words = [int(p) % 2**64 for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


class StepBatchSampler(Sampler[list[int]]):
    """For each global step, this rank's slice of that step's global batch.

    The sample stream is an endless concatenation of permutations of the dataset, one per epoch,
    each seeded by ``(seed, epoch)``. Step ``s`` (0-based) takes stream positions
    ``[s*G, (s+1)*G)`` with ``G = world_size * batch_size``, and rank r the r-th block of
    ``batch_size`` of them. Every sample is seen once per epoch, and a step's batch depends only on
    the seed and the step.
    """

    def __init__(self, dataset_size: int, batch_size: int, *, seed: int, start_step: int,
                 end_step: int, rank: int = 0, world_size: int = 1):
        if dataset_size < 1:
            raise TrainError("the dataset is empty")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self.rank = rank
        self.world_size = world_size
        self._permutations: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, _DATA_STREAM, epoch))
            if len(self._permutations) >= 2:  # a batch spans at most two epochs in a row
                self._permutations.pop(min(self._permutations))
            self._permutations[epoch] = torch.randperm(self.dataset_size, generator=generator)
        return self._permutations[epoch]

    def indices_for_step(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        indices = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.dataset_size)
            indices.append(int(self._permutation(epoch)[offset]))
        return indices

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.end_step):
            yield self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Reseed every global generator from (seed, step, rank): dropout, augmentation and hooks of a
    step are then the same whether the run was interrupted or not."""
    step_seed = derive_seed(seed, _STEP_STREAM, step, rank)
    random.seed(step_seed)
    np.random.seed(step_seed % 2**32)
    # Not torch.manual_seed: without an initialised CUDA context it queues a deferred call (with a
    # formatted stack trace) for every accelerator backend on every step.
    torch.default_generator.manual_seed(step_seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(step_seed)


def _capture_rng() -> dict[str, Any]:
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"bit_generator": bit_generator, "key": torch.from_numpy(key.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------- logging

class _RunLog:
    """Rank 0's outputs: TensorBoard events, ``metrics.jsonl`` and plain log lines."""

    def __init__(self, out_dir: Path, start_step: int, stage_name: str, max_steps: int):
        from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and rank 0 only

        self.stage_name, self.max_steps = stage_name, max_steps
        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / METRICS_FILENAME
        _drop_records_after(self.metrics_path, start_step)
        self.metrics = open(self.metrics_path, "a")
        # purge_step hides events a crashed run wrote after the checkpoint we resume from.
        self.tensorboard = SummaryWriter(str(out_dir / TENSORBOARD_DIRNAME), purge_step=start_step + 1)

    def write(self, step: int, record: dict[str, float]) -> None:
        for tag, value in record.items():
            self.tensorboard.add_scalar(tag, value, step)
        self.tensorboard.flush()
        self.metrics.write(json.dumps({"step": step, **record}) + "\n")
        self.metrics.flush()
        model_scalars = " ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in record.items()
                                 if k.startswith(("model/", "stage/")))
        log.info("%s step %d/%d | loss %.4g | lr %.3g | grad norm %.3g | %.1f clips/s%s",
                 self.stage_name, step, self.max_steps, record["loss"], record["lr"],
                 record["grad_norm"], record["clips_per_s"],
                 f" | {model_scalars}" if model_scalars else "")

    def close(self) -> None:
        self.tensorboard.close()
        self.metrics.close()


def _drop_records_after(path: Path, step: int) -> None:
    """Keep only the metrics records up to ``step`` (those of a crashed run past it are replaced)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by the crash
    path.write_text("".join(line + "\n" for line in kept))


def last_metrics(run_dir: str | Path) -> dict | None:
    """The last record of a run's ``metrics.jsonl``, or None when it has none."""
    path = Path(run_dir) / METRICS_FILENAME
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else None


# ----------------------------------------------------------------------------------- training

def _validate(stage: Stage, cfg: LaPoseConfig) -> None:
    t = cfg.train
    if stage.name != t.stage:
        raise ConfigError(f"train.stage is {t.stage!r} but the stage being trained is {stage.name!r}; "
                          "the checkpoint's config.json would misreport it")
    for name, value, minimum in (("batch_size", t.batch_size, 1), ("max_steps", t.max_steps, 0),
                                 ("warmup_steps", t.warmup_steps, 0), ("log_every", t.log_every, 1),
                                 ("ckpt_every", t.ckpt_every, 0)):
        if value < minimum:
            raise ConfigError(f"train.{name}={value} must be >= {minimum}")
    if t.lr <= 0 or not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"need train.lr > 0 and 0 <= train.min_lr_ratio <= 1 "
                          f"(got lr={t.lr}, min_lr_ratio={t.min_lr_ratio})")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers={cfg.data.num_workers} must be >= 0")
    if len(stage.dataset) < 1:
        raise TrainError(f"stage {stage.name!r}: the dataset is empty")


def _restore(ckpt: Path, stage: Stage, cfg: LaPoseConfig, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: LambdaLR,
             ctx: DistributedContext) -> dict[str, Any]:
    """Load model, optimizer, scheduler and RNG state from ``ckpt`` after checking it fits the run."""
    stored = read_config(ckpt)
    blocking = config_differences(stored, cfg, ("model",))
    if stored.train.stage != cfg.train.stage:
        blocking.append(f"train.stage: {stored.train.stage!r} -> {cfg.train.stage!r}")
    if blocking:
        raise CheckpointError(
            f"{ckpt / CONFIG_FILENAME}: cannot resume, the stored config differs from the current "
            f"one in {'; '.join(blocking)} (train a different model or stage in a new out_dir)")
    state = load_train_state(ckpt)
    state_file = ckpt / TRAIN_STATE_FILENAME
    if state.get("stage") != stage.name:
        raise CheckpointError(f"{state_file}: written by stage {state.get('stage')!r}, "
                              f"cannot resume stage {stage.name!r}")
    changed = config_differences(stored, cfg, ("data", "train"))
    if changed and ctx.is_main:
        log.warning("resuming %s with changed settings: %s", ckpt, "; ".join(changed))
    stored_batch = state.get("world_size", 1) * state.get("batch_size", cfg.train.batch_size)
    if stored_batch != ctx.world_size * cfg.train.batch_size and ctx.is_main:
        log.warning("global batch changes from %d to %d on resume: data order differs from an "
                    "uninterrupted run", stored_batch, ctx.world_size * cfg.train.batch_size)

    load_model_weights(ckpt, model)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        losses = [float(x) for x in state["losses"]]
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{state_file}: does not fit this model and optimizer "
                              f"({type(e).__name__}: {e})") from None
    _apply_current_hyperparameters(optimizer, scheduler, cfg.train)
    return {"step": int(state["step"]), "losses": losses}


def train(stage: Stage, cfg: LaPoseConfig, *, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train ``stage.model`` on ``stage.dataset`` for ``cfg.train.max_steps`` optimizer steps.

    Run as a plain process or under torchrun (one process per device). ``resume``: continue from the
    newest checkpoint in ``cfg.train.out_dir`` if there is one; without it, an out_dir that already
    holds checkpoints is refused rather than overwritten.
    """
    _validate(stage, cfg)
    ctx = setup_distributed()
    try:
        return _train(stage, cfg, ctx, resume=resume, progress=progress)
    finally:
        teardown_distributed(ctx)


def _train(stage: Stage, cfg: LaPoseConfig, ctx: DistributedContext, *, resume: bool,
           progress: bool) -> TrainResult:
    t = cfg.train
    out_dir = Path(t.out_dir)
    device = ctx.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = stage.model.to(device)
    model.train()
    if t.recompute_activations:  # only when asked: a Stage's model need not be a LaPose
        model.recompute_activations(True)
    optimizer = build_optimizer(model, t, device)
    scheduler = LambdaLR(optimizer, lambda step_index: lr_factor(step_index, t))
    trainable = [p for p in model.parameters() if p.requires_grad]

    start_step, losses, checkpoint = _starting_point(stage, cfg, model, optimizer, scheduler, ctx,
                                                     resume=resume)
    if start_step >= t.max_steps and checkpoint is not None:
        if ctx.is_main:
            log.info("%s is already at step %d >= max_steps %d; nothing to train",
                     checkpoint, start_step, t.max_steps)
        return TrainResult(out_dir, start_step, losses, checkpoint)

    ddp_model = wrap_model(model, ctx,
                           find_unused_parameters=getattr(stage, "find_unused_parameters", False))
    sampler = StepBatchSampler(len(stage.dataset), t.batch_size, seed=t.seed, start_step=start_step,
                               end_step=t.max_steps, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(stage.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda")
    autocast = (partial(torch.autocast, "cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else nullcontext)
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf

    run_log = _RunLog(out_dir, start_step, stage.name, t.max_steps) if ctx.is_main else None
    bar = tqdm(total=t.max_steps, initial=start_step, desc=stage.name, dynamic_ncols=True,
               disable=not (progress and ctx.is_main))
    step, saved_step = start_step, (start_step if checkpoint is not None else None)
    last_log_step, last_log_time = start_step, time.perf_counter()
    try:
        for step_index, batch in zip(range(start_step, t.max_steps), loader):
            step = step_index + 1
            _seed_step(t.seed, step, ctx.rank)
            lr = optimizer.param_groups[0]["lr"]
            with _explain_unused_parameters(stage):
                with autocast():
                    loss, scalars = ddp_model(_to_device(batch, device))
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            # One synchronisation per step: the rank-mean loss (every rank must see a non-finite
            # value, so that all stop together) and the gradient norm (identical on all ranks).
            loss_value, grad_norm_value = mean_over_ranks(
                ctx, torch.stack([loss.detach().float(), grad_norm.detach().float()])).tolist()
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm_value)):
                last = checkpoint if saved_step is not None else "none"
                raise NonFiniteLossError(
                    f"stage {stage.name!r}, step {step}: "
                    f"{'loss' if not math.isfinite(loss_value) else 'gradient norm'} is not finite "
                    f"(loss {loss_value}, grad norm {grad_norm_value}); stopped before this "
                    f"update. Last checkpoint: {last}")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss_value)
            stage.on_step_end(step)  # before saving: a hook's changes (e.g. codebook restarts) persist
            bar.update(1)

            if step % t.log_every == 0 or step == t.max_steps:
                now = time.perf_counter()
                if run_log is not None:
                    clips = ctx.world_size * t.batch_size * (step - last_log_step)
                    record = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm_value,
                              "clips_per_s": clips / (now - last_log_time),
                              **{f"model/{k}": float(v) for k, v in scalars.items()},
                              **{f"stage/{k}": float(v) for k, v in stage.scalars().items()}}
                    run_log.write(step, record)
                    bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.2e}")
                last_log_step, last_log_time = step, now

            if (t.ckpt_every and step % t.ckpt_every == 0) or step == t.max_steps:
                save_started = time.perf_counter()
                checkpoint = _save(out_dir, model, cfg, stage, optimizer, scheduler, step, losses, ctx)
                saved_step = step
                last_log_time += time.perf_counter() - save_started  # throughput counts training only
        if saved_step != step:  # max_steps == 0 on a fresh run: still leave a checkpoint behind
            checkpoint = _save(out_dir, model, cfg, stage, optimizer, scheduler, step, losses, ctx)
    finally:
        bar.close()
        if run_log is not None:
            run_log.close()
    return TrainResult(out_dir, step, losses, checkpoint)


def _starting_point(stage: Stage, cfg: LaPoseConfig, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: LambdaLR, ctx: DistributedContext,
                    *, resume: bool) -> tuple[int, list[float], Path | None]:
    """(first step, loss history, checkpoint): step 0 for a new run, the newest checkpoint's step
    (with model, optimizer, scheduler and RNG restored) when resuming."""
    out_dir = Path(cfg.train.out_dir)
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None:
        if resume and ctx.is_main:
            log.info("resume: no checkpoint in %s, starting from step 0", out_dir)
        return 0, [], None
    if not resume:
        raise CheckpointError(f"{out_dir}: already holds checkpoints (latest {checkpoint.name}); "
                              "resume to continue that run, or choose a new out_dir")
    restored = _restore(checkpoint, stage, cfg, model, optimizer, scheduler, ctx)
    if ctx.is_main:
        log.info("resumed from %s at step %d", checkpoint, restored["step"])
    return restored["step"], restored["losses"], checkpoint


@contextmanager
def _explain_unused_parameters(stage: Stage) -> Iterator[None]:
    """Turn DistributedDataParallel's error about parameters without gradients into advice."""
    try:
        yield
    except RuntimeError as e:
        if "Expected to have finished reduction" in str(e):
            raise TrainError(f"stage {stage.name!r}: some trainable parameters received no gradient "
                             "under DistributedDataParallel; set `find_unused_parameters = True` on "
                             "the stage (or freeze those parameters)") from e
        raise


def _save(out_dir: Path, model: torch.nn.Module, cfg: LaPoseConfig, stage: Stage,
          optimizer: torch.optim.Optimizer, scheduler: LambdaLR, step: int, losses: list[float],
          ctx: DistributedContext) -> Path:
    """Rank 0 writes the checkpoint; every rank waits for it and stops if it failed."""
    all_ranks_agree(ctx, True)  # barrier: every rank has finished the step
    error: BaseException | None = None
    path = out_dir / CHECKPOINTS_DIRNAME / step_dirname(step)
    if ctx.is_main:
        train_state = {"step": step, "stage": stage.name, "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "rng": _capture_rng(),
                       "losses": list(losses), "world_size": ctx.world_size,
                       "batch_size": cfg.train.batch_size}
        try:
            path = save_checkpoint(out_dir, unwrap_model(model), cfg, train_state)
        except Exception as e:  # re-raised below, once the other ranks know
            error = e
    if not all_ranks_agree(ctx, error is None):
        if error is not None:
            raise error
        raise TrainError(f"rank 0 failed to write the checkpoint of step {step} to {path}")
    return path
