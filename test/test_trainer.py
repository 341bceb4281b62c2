"""The generic trainer: optimisation, schedule, exact resume, crash-safe checkpoints, DDP on CPU.

Everything runs a small real regression network on generated data. Runs that must happen in other
processes (a run killed mid-way, a two-process torchrun job) execute this file as a script; see
``main`` at the bottom.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from lapose_core.config import ConfigError, LaPoseConfig, preset
from lapose_core.train import checkpoint as checkpoint_module
from lapose_core.train.checkpoint import (CheckpointError, latest_checkpoint, load_model_weights,
                                          load_train_state, read_config, read_model_metadata,
                                          save_checkpoint)
from lapose_core.train.distributed import DistributedSetupError, setup_distributed
from lapose_core.train.trainer import (NonFiniteLossError, StepBatchSampler, TrainError,
                                       build_optimizer, learning_rate, lr_factor, train)

REPO = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve()


# ------------------------------------------------------------------------------ a small real stage

class RegressionDataset(Dataset):
    """y = tanh(x A) b + noise, generated once from a fixed seed."""

    def __init__(self, size: int = 256, in_dim: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, in_dim, generator=g)
        a = torch.randn(in_dim, 16, generator=g) / math.sqrt(in_dim)
        b = torch.randn(16, generator=g)
        self.y = torch.tanh(self.x @ a) @ b + 0.01 * torch.randn(size, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class RegressionModel(nn.Module):
    """An MLP behind a frozen input projection (a stand-in for a frozen pretrained part)."""

    def __init__(self, in_dim: int = 8, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.frozen_projection = nn.Linear(in_dim, in_dim)
        self.frozen_projection.requires_grad_(False)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden),
                                 nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.poisoned = False  # set by a test to make the loss NaN

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pred = self.net(self.frozen_projection(batch["x"])).squeeze(-1)
        loss = F.mse_loss(pred, batch["y"])
        if self.poisoned:
            loss = loss * float("nan")
        return loss, {"mae": (pred - batch["y"]).abs().mean().item()}


class TiedModel(nn.Module):
    """Input embedding and output projection share one weight, as in many language models."""

    def __init__(self, vocab: int = 11, width: int = 6):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight


@dataclass
class RegressionStage:
    model: nn.Module
    dataset: Dataset
    name: str = "pretrain"
    kill_at_step: int | None = None  # SIGKILL this process at the end of that step
    steps_seen: list[int] = field(default_factory=list)
    step_hooks: dict = field(default_factory=dict)  # step -> callable run at the end of that step

    def scalars(self) -> dict[str, float]:
        return {"weight_norm": float(torch.cat([p.detach().flatten()
                                                for p in self.model.parameters()]).norm())}

    def on_step_end(self, step: int) -> None:
        self.steps_seen.append(step)
        if step in self.step_hooks:
            self.step_hooks[step]()
        if step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)


def make_stage(*, dropout: float = 0.0, hidden: int = 32, name: str = "pretrain") -> RegressionStage:
    torch.manual_seed(0)  # identical initial weights in every process
    return RegressionStage(RegressionModel(hidden=hidden, dropout=dropout), RegressionDataset(), name)


def make_config(out_dir: Path, **train) -> LaPoseConfig:
    cfg = preset("tiny")
    cfg.train.stage = "pretrain"
    cfg.train.out_dir = str(out_dir)
    cfg.train.seed = 0
    cfg.train.batch_size = 8
    cfg.train.max_steps = 10
    cfg.train.lr = 1e-2
    cfg.train.warmup_steps = 2
    cfg.train.weight_decay = 0.01
    cfg.train.log_every = 1
    cfg.train.ckpt_every = 5
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a child in its own process group, so a timeout also ends its grandchildren (torchrun's
    workers)."""
    proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(args)} ran past {timeout} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


# ------------------------------------------------------------------------------ optimisation

def test_loss_decreases_and_run_outputs_are_written(tmp_path, caplog):
    stage = make_stage()
    frozen_before = {k: v.clone() for k, v in stage.model.frozen_projection.state_dict().items()}
    cfg = make_config(tmp_path / "run", batch_size=16, max_steps=60, log_every=10, ckpt_every=20)

    with caplog.at_level(logging.INFO, logger="lapose_core.train.trainer"):
        result = train(stage, cfg, resume=True, progress=False)  # resume with nothing to resume
    assert "no checkpoint" in caplog.text and "step 60/60" in caplog.text

    assert result.final_step == 60 and len(result.losses) == 60
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)
    assert stage.steps_seen == list(range(1, 61))

    # Frozen parts are saved but not optimised.
    for k, v in stage.model.frozen_projection.state_dict().items():
        assert torch.equal(v, frozen_before[k])
    stored = load_file(str(result.checkpoint / "model.safetensors"))
    assert torch.equal(stored["frozen_projection.weight"], frozen_before["weight"])

    # Checkpoints: the last two kept, `latest` names the newest, weights and config round-trip.
    ckpt_root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["latest", "step_40", "step_60"]
    assert (ckpt_root / "latest").read_text().strip() == "step_60"
    assert latest_checkpoint(tmp_path / "run") == result.checkpoint == ckpt_root / "step_60"
    fresh = make_stage(hidden=32).model
    stored_cfg = load_model_weights(tmp_path / "run", fresh)  # a run dir follows `latest`
    assert_same_weights(fresh, stage.model)
    assert stored_cfg.to_json() == cfg.to_json()
    assert read_config(result.checkpoint).train.max_steps == 60

    # Logs: one metrics record per log step with every scalar, and TensorBoard events.
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    for r in records:
        assert {"loss", "lr", "grad_norm", "clips_per_s", "model/mae", "stage/weight_norm"} <= r.keys()
        assert r["loss"] == result.losses[r["step"] - 1]
        assert r["clips_per_s"] > 0
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))

    # Starting afresh over an existing run is refused rather than overwriting it.
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(make_stage(), cfg, progress=False)


def test_learning_rate_warmup_then_cosine(tmp_path):
    t = make_config(tmp_path, lr=1e-3, warmup_steps=4, max_steps=12, min_lr_ratio=0.1).train
    assert [learning_rate(k, t) for k in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert learning_rate(4, t) == pytest.approx(1e-3)
    cosine = 0.5 * (1 + math.cos(math.pi * 2 / 7))  # 2 of 7 decay steps done
    assert learning_rate(6, t) == pytest.approx(1e-3 * (0.1 + 0.9 * cosine))
    assert learning_rate(11, t) == pytest.approx(1e-4)  # reaches lr * min_lr_ratio at the last step
    decay = [learning_rate(k, t) for k in range(4, 12)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lr_factor(0, make_config(tmp_path, warmup_steps=0, max_steps=1).train) == 1.0

    # The optimizer really runs at those rates.
    cfg = make_config(tmp_path / "run", lr=1e-3, warmup_steps=4, max_steps=12, min_lr_ratio=0.1)
    train(make_stage(), cfg, progress=False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run")]
    assert lrs == pytest.approx([learning_rate(k, t) for k in range(12)], rel=1e-12)


def test_weight_decay_groups_skip_vectors_and_frozen_parameters(tmp_path):
    model = make_stage().model
    optimizer = build_optimizer(model, make_config(tmp_path).train)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.net.parameters()}  # the frozen projection is left out


# ------------------------------------------------------------------------------ data order

def test_batches_depend_on_seed_and_step_only():
    full = StepBatchSampler(20, 6, seed=3, start_step=0, end_step=10)
    batches = list(full)
    assert list(StepBatchSampler(20, 6, seed=3, start_step=4, end_step=10)) == batches[4:]
    assert list(StepBatchSampler(20, 6, seed=4, start_step=0, end_step=10)) != batches
    # Every sample is seen once per epoch: the stream is a sequence of permutations.
    stream = [i for batch in batches for i in batch]
    for epoch in range(3):
        assert sorted(stream[epoch * 20:(epoch + 1) * 20]) == list(range(20))
    # Two ranks with batch 3 split exactly the global batch of one process with batch 6.
    ranks = [list(StepBatchSampler(20, 3, seed=3, start_step=0, end_step=10, rank=r, world_size=2))
             for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == batches


# ------------------------------------------------------------------------------ resume

def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    # Dropout makes the steps random: exact reproduction also needs the RNG handling to be right.
    reference_stage = make_stage(dropout=0.1)
    reference = train(reference_stage, make_config(tmp_path / "reference"), progress=False)

    run_dir = tmp_path / "killed"
    proc = run_script([sys.executable, str(THIS_FILE), "kill-at-step-7", str(run_dir)], timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert latest_checkpoint(run_dir).name == "step_5"
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 7))  # ran past the checkpoint

    resumed_stage = make_stage(dropout=0.1)
    resumed = train(resumed_stage, make_config(run_dir), resume=True, progress=False)
    assert resumed_stage.steps_seen == [6, 7, 8, 9, 10]
    assert resumed.final_step == 10
    assert resumed.losses == reference.losses  # bitwise
    assert_same_weights(resumed_stage.model, reference_stage.model)
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 11))  # no duplicates

    ref_state = load_train_state(reference.checkpoint)
    res_state = load_train_state(resumed.checkpoint)
    for a, b in zip(ref_state["optimizer"]["state"].values(), res_state["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])

    # Resuming a finished run trains nothing and returns its checkpoint.
    again = train(make_stage(dropout=0.1), make_config(run_dir), resume=True, progress=False)
    assert again.final_step == 10 and again.checkpoint == resumed.checkpoint


# ------------------------------------------------------------------------------ bad checkpoints

@pytest.fixture
def finished_run(tmp_path) -> tuple[Path, LaPoseConfig]:
    cfg = make_config(tmp_path / "run", max_steps=2, ckpt_every=2)
    train(make_stage(), cfg, progress=False)
    return tmp_path / "run", cfg


def test_truncated_weights_are_refused_naming_the_file(finished_run):
    run_dir, cfg = finished_run
    weights = run_dir / "checkpoints" / "step_2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_model_weights(run_dir, make_stage().model)
    assert str(weights) in str(err.value)
    cfg.train.max_steps = 4
    with pytest.raises(CheckpointError) as err:
        train(make_stage(), cfg, resume=True, progress=False)
    assert str(weights) in str(err.value)


def test_truncated_train_state_and_missing_files_are_refused(finished_run):
    run_dir, cfg = finished_run
    ckpt = run_dir / "checkpoints" / "step_2"
    state = ckpt / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    cfg.train.max_steps = 4
    with pytest.raises(CheckpointError) as err:
        train(make_stage(), cfg, resume=True, progress=False)
    assert str(state) in str(err.value)

    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing") as err:
        load_model_weights(ckpt, make_stage().model)
    assert str(ckpt / "config.json") in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_model_weights(run_dir / "no_such_run", make_stage().model)


def test_mismatched_tensors_are_refused_with_names_and_shapes(finished_run):
    run_dir, _ = finished_run
    with pytest.raises(CheckpointError) as err:
        load_model_weights(run_dir, make_stage(hidden=16).model)
    message = str(err.value)
    assert str(run_dir / "checkpoints" / "step_2" / "model.safetensors") in message
    assert "net.0.weight: stored (32, 8), model (16, 8)" in message

    class Wider(RegressionModel):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(2, 2)

    with pytest.raises(CheckpointError, match=r"missing tensors \[extra.bias, extra.weight\]"):
        load_model_weights(run_dir, Wider())
    load_model_weights(run_dir, Wider(), strict=False)  # the shared part loads

    # A prefix selects one part of a larger model.
    net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.LayerNorm(32), nn.Dropout(0.0), nn.Linear(32, 1))
    load_model_weights(run_dir, net, prefix="net.")
    stored = load_file(str(run_dir / "checkpoints" / "step_2" / "model.safetensors"))
    assert torch.equal(net[0].weight, stored["net.0.weight"])
    with pytest.raises(CheckpointError, match="no tensor name starts with prefix 'decoder.'"):
        load_model_weights(run_dir, net, prefix="decoder.")


def test_resume_with_a_different_model_or_stage_is_refused(finished_run):
    run_dir, cfg = finished_run
    config_file = str(run_dir / "checkpoints" / "step_2" / "config.json")
    cfg.train.max_steps = 4
    cfg.model.width = 256
    cfg.model.heads = 8
    with pytest.raises(CheckpointError) as err:
        train(make_stage(), cfg, resume=True, progress=False)
    assert config_file in str(err.value)
    assert "model.width: 128 -> 256" in str(err.value) and "model.heads: 4 -> 8" in str(err.value)

    cfg = make_config(run_dir, max_steps=4, ckpt_every=2, stage="posttrain")
    with pytest.raises(CheckpointError, match=r"train\.stage: 'pretrain' -> 'posttrain'") as err:
        train(make_stage(name="posttrain"), cfg, resume=True, progress=False)
    assert config_file in str(err.value)

    # Changing training settings (not the model) is allowed: the run continues.
    cfg = make_config(run_dir, max_steps=4, ckpt_every=2, lr=5e-3)
    assert train(make_stage(), cfg, resume=True, progress=False).final_step == 4


def test_bad_run_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.stage is 'pretrain'.*'vqvae'"):
        train(make_stage(name="vqvae"), make_config(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="train.batch_size=0 must be >= 1"):
        train(make_stage(), make_config(tmp_path, batch_size=0), progress=False)
    stage = make_stage()
    stage.dataset = torch.utils.data.Subset(stage.dataset, [])
    with pytest.raises(TrainError, match="dataset is empty"):
        train(stage, make_config(tmp_path), progress=False)
    stage = make_stage()
    stage.model.requires_grad_(False)
    with pytest.raises(TrainError, match="no parameter with requires_grad=True"):
        train(stage, make_config(tmp_path), progress=False)


# ------------------------------------------------------------------------------ crash safety

def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    def write_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a partial file
        raise OSError(28, "No space left on device")

    stage = make_stage()
    # The disk "fills up" after step 3 has been saved; the save of step 6 dies half-way.
    stage.step_hooks[4] = lambda: monkeypatch.setattr(checkpoint_module, "save_file",
                                                      write_half_then_fail)
    cfg = make_config(tmp_path / "run", max_steps=6, ckpt_every=3)
    with pytest.raises(OSError, match="No space left"):
        train(stage, cfg, progress=False)
    monkeypatch.undo()

    ckpt_root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["latest", "step_3"]  # no temporaries left
    assert latest_checkpoint(tmp_path / "run") == ckpt_root / "step_3"
    assert load_train_state(ckpt_root / "step_3")["step"] == 3
    load_model_weights(tmp_path / "run", make_stage().model)

    # Resuming picks up from the intact checkpoint and finishes.
    assert train(make_stage(), cfg, resume=True, progress=False).final_step == 6


def test_tied_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    model = TiedModel()
    cfg = make_config(tmp_path)
    path = save_checkpoint(tmp_path, model, cfg, {"step": 1})
    assert sorted(load_file(str(path / "model.safetensors"))) == ["embed.weight", "head.weight"]
    assert read_model_metadata(path)["step"] == "1"
    fresh = TiedModel()
    load_model_weights(path, fresh)
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert fresh.head.weight is fresh.embed.weight  # the tie survives loading

    # Saving the same step again replaces it; only the newest two steps are kept.
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model, cfg, {"step": step})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_2", "step_3"]


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    stage = make_stage()

    def poison():
        stage.model.poisoned = True

    stage.step_hooks[3] = poison
    cfg = make_config(tmp_path / "run", max_steps=10, ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 4: loss is not finite") as err:
        train(stage, cfg, progress=False)
    assert "step_2" in str(err.value)  # names the last good checkpoint
    assert all(torch.isfinite(p).all() for p in stage.model.parameters())  # the bad update never ran
    assert latest_checkpoint(tmp_path / "run").name == "step_2"
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    fresh = make_stage().model
    load_model_weights(tmp_path / "run", fresh)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


# ------------------------------------------------------------------------------ distributed

def test_incomplete_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(DistributedSetupError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        setup_distributed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process_with_double_batch(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(THIS_FILE), "ddp", str(out)]
    proc = run_script(cmd, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]

    rank0, rank1 = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"

    single_stage = make_stage()
    single = train(single_stage, make_config(tmp_path / "single", batch_size=8, max_steps=8),
                   progress=False)
    for name, tensor in single_stage.model.state_dict().items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    ddp_losses = json.loads((out / "losses.json").read_text())
    assert ddp_losses == pytest.approx(single.losses, rel=1e-5, abs=1e-6)
    # Only rank 0 wrote the run outputs, and its checkpoint holds the shared weights.
    stored = load_file(str(out / "run" / "checkpoints" / "step_8" / "model.safetensors"))
    assert all(torch.equal(stored[k], rank0[k]) for k in rank0)
    assert [r["step"] for r in read_metrics(out / "run")] == list(range(1, 9))
    # The process group is gone once training returns: no Gloo thread left to abort the exit.
    for rank in (0, 1):
        threads = json.loads((out / f"threads{rank}.json").read_text())
        assert not [t for t in threads if "gloo" in t], f"rank {rank} still runs {threads}"


# ------------------------------------------------------------------------------ subprocess roles

def main(role: str, out: Path) -> None:
    if role == "kill-at-step-7":
        stage = make_stage(dropout=0.1)
        stage.kill_at_step = 7
        train(stage, make_config(out), progress=False)
        raise SystemExit("expected to be killed at step 7")
    if role == "ddp":  # under torchrun: 2 ranks x batch 4 equals 1 process x batch 8
        out.mkdir(parents=True, exist_ok=True)
        stage = make_stage()
        result = train(stage, make_config(out / "run", batch_size=4, max_steps=8), progress=False)
        rank = int(os.environ["RANK"])
        save_file({k: v.contiguous() for k, v in stage.model.state_dict().items()},
                  str(out / f"rank{rank}.safetensors"))
        if rank == 0:
            (out / "losses.json").write_text(json.dumps(result.losses))
        threads = [(Path("/proc/self/task") / t / "comm").read_text().strip()
                   for t in os.listdir("/proc/self/task")] if Path("/proc/self/task").is_dir() else []
        (out / f"threads{rank}.json").write_text(json.dumps(threads))
        return
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
