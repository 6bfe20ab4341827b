"""Data-parallel training of one run over several processes (DDP, started by torchrun).

Every rank draws the same global batch from the run's seeded stream and trains on its
slice of each micro-batch. DDP averages the slices' gradients, so after the all-reduce every
rank holds the gradient of the whole batch: the one a single process would compute. The
all-reduce happens on the last micro-batch of a step only (`no_sync` before it), and
clipping, the norms and the optimizer step all see the all-reduced gradient. Rank 0
writes the record and logs to W&B; the other ranks only train.

    gradlab train devices=2 ...        starts torchrun with 2 processes on this machine
    torchrun --nproc_per_node=2 -m gradlab train ...    the same, by hand (or multi-node)
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import NamedTuple

from gradlab.errors import bad


class World(NamedTuple):
    rank: int
    size: int
    local_rank: int
    local_size: int  # processes of the run on this machine


SOLO = World(0, 1, 0, 1)  # a run in one process


def world() -> World:
    """This process's place among torchrun's processes (rank 0 of 1 outside torchrun)."""
    env = os.environ
    return World(
        *(
            int(env.get(key, default))
            for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))
        )
    )


def check(conf: dict, size: int) -> None:
    """A data-parallel run needs a batch that splits evenly and, on GPUs, one GPU per process
    (process r takes GPU r: one GPU named for all of them would put every rank on it)."""
    import torch

    if size == 1:
        return
    if conf["batch_size"] % size:
        raise bad(
            "batch_size",
            conf["batch_size"],
            f"must split evenly over the {size} processes of a data-parallel run",
        )
    if str(conf["device"]).startswith("cuda:"):
        raise bad(
            "device",
            conf["device"],
            f"names one GPU for all {size} processes of a data-parallel run; "
            f"use device=cuda (process r takes GPU r) or device=cpu",
        )
    if conf["device"] != "cpu" and torch.cuda.is_available() and size > torch.cuda.device_count():
        raise bad(
            "devices",
            size,
            f"this machine has {torch.cuda.device_count()} GPU(s); use device=cpu for more processes",
        )


def spawn(devices: int, args: list[str]) -> int:
    """Start `gradlab train` as `devices` torchrun processes on this machine; their exit code."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        "-m",
        "gradlab",
        "train",
        *args,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }  # gradlab sets the threads
    return subprocess.run(command, env=env).returncode


@contextmanager
def joined(conf: dict):
    """The process group of a torchrun run for the duration of the block (nothing outside torchrun)."""
    import torch
    import torch.distributed as dist

    w = world()
    if w.size == 1:
        yield w
        return
    check(conf, w.size)
    use_gpu = conf["device"] != "cpu" and torch.cuda.is_available()
    if use_gpu:
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group("nccl" if use_gpu else "gloo")
    try:
        yield w
    finally:
        dist.destroy_process_group()


def barrier(w: World) -> None:
    if w.size > 1:
        import torch.distributed as dist

        dist.barrier()


def agree(flag: bool, w: World) -> bool:
    """Rank 0's flag, on every rank."""
    if w.size == 1:
        return flag
    import torch.distributed as dist

    value = [flag]
    dist.broadcast_object_list(value, src=0)
    return value[0]


def wrap(model, size: int):
    """The model as DDP wraps it, for training steps; itself in a single process."""
    if size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(micro_batches: list, w: World) -> list:
    """This rank's slice of every micro-batch."""
    if w.size == 1:
        return micro_batches
    return [(x.tensor_split(w.size)[w.rank], y.tensor_split(w.size)[w.rank]) for x, y in micro_batches]
