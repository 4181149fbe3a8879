"""torch.distributed set-up for hmar-train: process group (NCCL on GPUs, gloo on CPUs), DDP or FSDP2 wrapping.

Launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) or as a single process; FSDP in a single
process still needs a one-rank process group, which is created on a free local port.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(distributed: str) -> Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if (world > 1 or distributed == "fsdp") and not dist.is_initialized():
        # torchrun provides the rendezvous in the environment; a lone process gets its own free local port
        init = "env://" if "MASTER_ADDR" in os.environ else f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group("nccl" if cuda else "gloo", init_method=init, rank=rank, world_size=world,
                                **({"device_id": device} if cuda else {}))
    return Env(rank, world, local_rank, device)


def wrap(model: torch.nn.Module, distributed: str, env: Env) -> torch.nn.Module:
    """FSDP2: shard every transformer block, then the rest; DDP when several ranks; the model itself otherwise."""
    if distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if env.world > 1:
        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return model


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()
