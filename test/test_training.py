"""The three LA-Pose stages on real KITTI frames: losses fall, stages chain through checkpoints,
the inverse-dynamics model stays frozen unless fine-tuning is asked for, and the CLI reports errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lapose_core.config import LaPoseConfig
from lapose_core.train.checkpoint import CheckpointError, resolve_checkpoint
from lapose_core.train.stages import build_stage
from lapose_core.train.trainer import train

# A micro model: the real architecture at a size that trains in seconds on 2 cores.
MICRO = {"image_height": 64, "image_width": 192, "patch_size": 32, "width": 64, "heads": 2,
         "encoder_layers": 1, "idm_layers": 1, "fdm_layers": 1, "fdm_extra_layers": 1,
         "pose_layers": 1, "pose_width": 64, "pose_heads": 2, "vq_hidden": 32,
         "vq_codebook_size": 64, "vq_code_dim": 16}


def micro_config(shared_data: Path, tmp: Path, stage: str, steps: int, **train) -> LaPoseConfig:
    seq = str(shared_data / "kitti" / "07_head")
    return LaPoseConfig.from_dict({
        "model": MICRO,
        "data": {"pretrain_sources": [seq], "posttrain_sequences": [seq]},
        "train": {"stage": stage, "out_dir": str(tmp / stage), "max_steps": steps, "batch_size": 2,
                  "warmup_steps": 3, "log_every": 5, "ckpt_every": steps, **train}})


def falls(losses, k=5) -> bool:
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


@pytest.fixture(scope="module")
def chain(shared_data, tmp_path_factory):
    """vqvae -> pretrain -> posttrain, as a user runs them."""
    tmp = tmp_path_factory.mktemp("chain")
    root = Path.cwd()
    results = {}
    cfg = micro_config(shared_data, tmp, "vqvae", 30, lr=2e-3)
    results["vqvae"] = (train(build_stage(cfg, root), cfg, progress=False), cfg)
    cfg = micro_config(shared_data, tmp, "pretrain", 30, lr=1e-3,
                       vqvae_checkpoint=str(tmp / "vqvae"))
    results["pretrain"] = (train(build_stage(cfg, root), cfg, progress=False), cfg)
    cfg = micro_config(shared_data, tmp, "posttrain", 40, lr=2e-3, init_from=str(tmp / "pretrain"))
    results["posttrain"] = (train(build_stage(cfg, root), cfg, progress=False), cfg)
    return tmp, results


@pytest.mark.parametrize("stage", ["vqvae", "pretrain", "posttrain"])
def test_stage_loss_falls_on_real_frames(chain, stage):
    result, _ = chain[1][stage]
    assert result.final_step == len(result.losses)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert falls(result.losses), f"{stage} losses did not fall: {result.losses}"


def test_stages_inherit_and_freeze(chain):
    tmp, results = chain
    vq = load_file(str(results["vqvae"][0].checkpoint / "model.safetensors"))
    pre = load_file(str(results["pretrain"][0].checkpoint / "model.safetensors"))
    post = load_file(str(results["posttrain"][0].checkpoint / "model.safetensors"))
    # Pretraining kept the stage-0 VQ-VAE frozen (codebook included) and trained the dynamics.
    for k in vq:
        if k.startswith("vqvae."):
            assert torch.equal(vq[k], pre[k]), k
    assert not torch.equal(vq["idm.queries"], pre["idm.queries"])
    # Frozen post-training: the pretrained encoder and inverse dynamics are untouched.
    for k in pre:
        if k.split(".")[0] in ("encoder", "idm", "time_embed", "bottleneck"):
            assert torch.equal(pre[k], post[k]), k


def test_finetune_updates_inverse_dynamics(chain, shared_data, tmp_path):
    tmp, results = chain
    cfg = micro_config(shared_data, tmp_path, "posttrain", 4, init_from=str(tmp / "pretrain"),
                       freeze_idm=False)
    result = train(build_stage(cfg, Path.cwd()), cfg, progress=False)
    pre = load_file(str(results["pretrain"][0].checkpoint / "model.safetensors"))
    post = load_file(str(result.checkpoint / "model.safetensors"))
    assert not torch.equal(pre["idm.queries"], post["idm.queries"])


def test_posttrain_needs_a_pretrained_checkpoint(shared_data, tmp_path):
    cfg = micro_config(shared_data, tmp_path, "posttrain", 2)
    with pytest.raises(CheckpointError, match="init_from is empty"):
        build_stage(cfg, Path.cwd())
    cfg.train.init_from = str(tmp_path / "nothing-here")
    with pytest.raises(CheckpointError, match="nothing-here"):
        build_stage(cfg, Path.cwd())


def test_pretrain_refuses_vqvae_of_another_size(chain, shared_data, tmp_path):
    tmp, _ = chain
    cfg = micro_config(shared_data, tmp_path, "pretrain", 2, vqvae_checkpoint=str(tmp / "vqvae"))
    cfg.model.vq_codebook_size = 32
    with pytest.raises(CheckpointError, match=r"model config differs.*vq_codebook_size"):
        build_stage(cfg, Path.cwd())


def test_one_vqvae_serves_pretraining_with_motion_features(chain, shared_data, tmp_path):
    """The tokenizer depends on image size and its own fields only: a pretraining run with another
    inverse-dynamics input loads it (and still trains)."""
    tmp, _ = chain
    cfg = micro_config(shared_data, tmp_path, "pretrain", 1, vqvae_checkpoint=str(tmp / "vqvae"))
    cfg.model.motion_features = "correlation"
    stage = build_stage(cfg, Path.cwd())
    stored = load_file(str(resolve_checkpoint(tmp / "vqvae") / "model.safetensors"))
    assert torch.equal(stage.model.state_dict()["vqvae.decoder.0.weight"].cpu(),
                       stored["vqvae.decoder.0.weight"])


def test_cli_reports_bad_config_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\ntrain:\n  stage: pretrain\n  lerning_rate: 1\n")
    out = subprocess.run([sys.executable, "-m", "lapose_core.cli", "pretrain", "--config", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "bad.yaml" in out.stderr and "lerning_rate" in out.stderr
    assert "Traceback" not in out.stderr


CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_load(path):
    """Every shipped config is valid (no unknown key, every switch a known value)."""
    LaPoseConfig.from_yaml(path)


def test_small_gpu_config_keeps_the_tiny_recipe():
    """training/configs/small/posttrain.yaml is the tiny recipe at the small preset's size: the same
    switches and data, with only the size, the batch, the schedule and the loaders changed."""
    small = LaPoseConfig.from_yaml(CONFIGS / "small" / "posttrain.yaml")
    tiny = LaPoseConfig.from_yaml(CONFIGS / "tiny" / "posttrain.yaml")
    sizes = ("image_height", "image_width", "width", "heads", "encoder_layers", "idm_layers",
             "fdm_layers", "pose_layers", "pose_width", "pose_heads", "vq_hidden", "patch_size")
    differ = {k for k, v in small.model.__dict__.items() if getattr(tiny.model, k) != v}
    assert differ and differ <= set(sizes)
    differ = {k for k, v in small.data.__dict__.items() if getattr(tiny.data, k) != v}
    assert differ == {"num_workers"}
    differ = {k for k, v in small.train.__dict__.items() if getattr(tiny.train, k) != v}
    assert differ == {"batch_size", "max_steps", "warmup_steps", "ckpt_every", "out_dir"}


def test_bench_train_measures_with_recomputed_activations():
    """lapose bench-train --recompute-activations runs a measurement and prints its row."""
    out = subprocess.run([sys.executable, "-m", "lapose_core.cli", "bench-train", "--presets", "tiny",
                          "--stages", "posttrain", "--steps", "1", "--batch-size", "1", "--device", "cpu",
                          "--recompute-activations"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    row = out.stdout.strip().splitlines()[-1].split()
    assert row[:4] == ["tiny", "posttrain", "cpu", "1"], out.stdout
    assert float(row[4]) > 0 and float(row[6]) > 0  # clips/s, peak MiB


def test_core_commands_need_no_installed_entry_points(monkeypatch):
    """Run from a source checkout (no package metadata, so no ``lapose.commands`` entry points),
    ``python -m lapose_core.cli`` still has evaluation; an installed entry point of the same name is
    not registered twice."""
    import lapose_core.cli as cli

    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    choices = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"eval", "diagnose", "bench-eval", "posttrain"} <= set(choices)

    class Stale:  # what an older install's metadata still lists
        name = "eval"

        @staticmethod
        def load():
            raise AssertionError("registered twice")

    monkeypatch.setattr(cli, "entry_points", lambda group: [Stale()])
    assert "eval" in cli.build_parser()._subparsers._group_actions[0].choices


def test_results_gpu_section_reads_small_gpu_runs(tmp_path):
    """make_results.py --gpu-only writes training/small_gpu.sh's figures (its JSON and the logs'
    clips/s) between its markers, leaving the rest of the file as it was; a full run where the GPU
    runs are absent keeps that section."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "make_results", Path(__file__).resolve().parents[1] / "training" / "make_results.py")
    make_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_results)
    runs = tmp_path / "small"
    (runs / "val").mkdir(parents=True)
    (runs / "val" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "clips_per_s": c}) for s, c in ((10, 30.0), (20, 170.0), (30, 180.0))))
    (runs / "val.07_head.2fps.diagnose.json").write_text(json.dumps(
        {"windows": 10, "auc5": 0.6763, "ate_s": 0.0832, "prior_auc5": 0.4005, "yaw_corr": 0.97, "scale_ratio": 1.01}))
    (runs / "device.txt").write_text("Some GPU\n")
    (runs / "recipe.txt").write_text("rotation_fit: focus; translation_frame: camera\n")
    out = tmp_path / "results.md"
    out.write_text("# Results\n\nkept\n")
    make_results.replace_section(out, make_results.gpu_section(runs), make_results.GPU_START, make_results.GPU_END)
    make_results.replace_section(out, make_results.gpu_section(runs), make_results.GPU_START, make_results.GPU_END)
    text = out.read_text()
    assert text.count(make_results.GPU_START) == 1 and "kept" in text and "Device: Some GPU" in text
    assert "as trained: rotation_fit: focus; translation_frame: camera)" in text
    assert "| val | 30 | 170 | 07_head | 2 | 10 | 0.676 | 0.0832 | n/a | 0.401 | 0.970 | 1.010 |" in text
    # A full run on a machine without the GPU runs keeps the section the file has.
    kept = make_results.existing_section(out, make_results.GPU_START, make_results.GPU_END)
    assert kept.startswith(make_results.GPU_START) and kept.endswith(make_results.GPU_END)
    assert "Device: Some GPU" in kept and "kept\n" not in kept
    assert make_results.existing_section(tmp_path / "absent.md", make_results.GPU_START, make_results.GPU_END) is None
