"""Process-group set-up for single-process and torchrun training.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and describes the
job through environment variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. A plain
``python`` launch sets none of them and runs as a world of one, with no process group at all, so the
same training entry point serves a laptop and a multi-GPU node.

Backend: NCCL when CUDA is available (one GPU per process, chosen by LOCAL_RANK), Gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(RuntimeError):
    """The torchrun environment is incomplete or inconsistent."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool  # True when setup_distributed created the group (and must destroy it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _read_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"environment variable {name}={value!r} is not an integer") from None


def setup_distributed() -> DistributedContext:
    """Join the process group described by torchrun's environment, or run as a world of one.

    An already initialised default group (e.g. created by an outer launcher) is reused and left for
    its owner to destroy.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        return DistributedContext(rank, world_size, local_rank, _device_for(local_rank), False)

    world_size = _read_int("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world_size < 1:
        raise DistributedSetupError(f"environment variable WORLD_SIZE={world_size} must be >= 1")
    if world_size == 1:
        local_rank = _read_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        return DistributedContext(0, 1, local_rank, _device_for(local_rank), False)

    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} but environment variable(s) {', '.join(missing)} are not set; "
            "launch with torchrun (python -m torch.distributed.run --nproc_per_node N ...)")
    rank, local_rank = _read_int("RANK"), _read_int("LOCAL_RANK")
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"environment variable RANK={rank} is outside 0..{world_size - 1}")
    if not dist.is_available():
        raise DistributedSetupError("this PyTorch build has no torch.distributed support")

    # DistributedDataParallel imports torch._dynamo when it is built. Imported after the process
    # group exists, torch._dynamo keeps a reference to it: the group's Gloo threads then outlive
    # destroy_process_group, and a few runs in a hundred abort at exit ("terminate called without
    # an active exception") after their work is written. Imported before, it holds none.
    import torch._dynamo  # noqa: F401

    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                                        "CUDA device(s) are visible")
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", rank=rank, world_size=world_size,
                                device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, _device_for(local_rank), True)


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def teardown_distributed(ctx: DistributedContext) -> None:
    """Destroy the process group if ``setup_distributed`` created it."""
    if ctx.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_ranks_agree(ctx: DistributedContext, ok: bool) -> bool:
    """True only if ``ok`` holds on every rank. Doubles as a barrier.

    Used where one rank may fail alone (rank 0 writing a checkpoint): every rank learns about the
    failure and stops, instead of the others waiting forever in the next collective.
    """
    if not ctx.is_distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def mean_over_ranks(ctx: DistributedContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``values`` across ranks (the tensor itself on a single process)."""
    if not ctx.is_distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / ctx.world_size


def wrap_model(model: torch.nn.Module, ctx: DistributedContext, *,
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when the world has more than one process.

    ``find_unused_parameters`` costs an extra graph traversal per step; it is only needed when some
    trainable parameters receive no gradient in a step (e.g. a branch that is skipped).
    """
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
