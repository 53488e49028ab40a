"""Device, DDP set-up and the few collectives the loop needs (all of them here, as in open_clip_train).

One process: every helper is the identity. Under ``torchrun`` with more than one process: NCCL on
GPUs, gloo on CPU; the engine calls these helpers on every rank at the same points.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pretrain.config import PretrainError


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def setup_runtime(device: str, amp: str) -> Runtime:
    """Device from --device (auto: CUDA if available), DDP when launched by torchrun with >1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PretrainError("--device cuda requested but CUDA is not available; use --device cpu")
        dev = torch.device("cuda", local if world > 1 or dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    amp_dtype = None
    if dev.type == "cuda" and amp != "off":
        amp_dtype = torch.float16 if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()) \
            else torch.bfloat16
    return Runtime(rank, world, dev, amp_dtype)


def all_reduce_mean(values: list[float], rt: Runtime) -> list[float]:
    if not rt.ddp:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return (t / rt.world).tolist()


def all_gather_object(obj, rt: Runtime) -> list:
    if not rt.ddp:
        return [obj]
    out = [None] * rt.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, rt: Runtime):
    """Rank 0's ``obj`` on every rank (a decision only rank 0 can take, e.g. whether a save worked)."""
    if not rt.ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = ["Runtime", "all_gather_object", "all_reduce_mean", "broadcast_object", "setup_runtime"]
