"""Multi-GPU / multi-node training through torchrun (DistributedDataParallel).

    torchrun --nproc-per-node 4 -m edge_assist train quality --data D --out O
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 -m edge_assist train ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
`DistContext.from_env()` reads them, picks NCCL on CUDA and gloo on CPU, and
gives each process its shard of every epoch. Without those variables it is
a single process and nothing here does anything. Only rank 0 writes
checkpoints, logs and progress bars.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edge_assist.training.common import training_device


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, backend: str | None = None) -> "DistContext":
        """Join the process group torchrun describes (or stay single-process)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=training_device())
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = torch.cuda.is_available() and backend != "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        here = False
        if not dist.is_initialized():
            dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), rank=rank, world_size=world)
            here = True
        dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
        return cls(rank, world, local, dev, here)

    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if not self.distributed:
            return model
        if self.device.type == "cuda":
            return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])
        return nn.parallel.DistributedDataParallel(model)

    def shard(self, n: int, epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
        """This rank's indices for one epoch: one permutation shared by all
        ranks (same seed), padded to a multiple of world_size, then strided,
        so every rank runs the same number of steps."""
        idx = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        if self.world_size > 1:
            pad = (-n) % self.world_size
            if pad:
                idx = np.concatenate([idx, idx[:pad]])
            idx = idx[self.rank :: self.world_size]
        return idx

    def all_reduce_sum(self, values: np.ndarray | list[float]) -> np.ndarray:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64))
        if self.distributed:
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised_here = False


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update({
        "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })
    torch.set_num_threads(1)
    ctx = DistContext.from_env(backend="gloo")
    try:
        fn(ctx, *args)
    finally:
        ctx.close()


def spawn_local(fn: Callable, world_size: int, *args) -> None:
    """Run fn(ctx, *args) in world_size local CPU processes on gloo (what
    torchrun does, for tests and for machines without torchrun)."""
    import torch.multiprocessing as mp

    mp.spawn(_spawn_entry, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True)
