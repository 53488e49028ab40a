"""What makes ``--resume`` exact: the data order, every RNG, and the ``last.pt`` format.

The sample order of epoch e is a pure function of (seed, e), and a sample's augmentation of
(seed, e, index) (``pretrain/datasets.py``), so a resumed run restarts mid-epoch on exactly the
batch that came next; :class:`ResumableSampler` skips the batches already trained on. ``last.pt``
holds model (without the frozen text encoder), optimizer, scheduler, grad scaler, step, every rank's
RNG states and the history; the engine writes it atomically.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from pretrain.config import PretrainError

STATE_FORMAT = "nnunet-mosmos-pretrain-state"


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields ``(index, epoch)`` keys and can skip the first batches."""

    def __init__(self, n: int, world: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
        self.skip = 0

    def set_position(self, epoch: int, skip_samples: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self):
        return iter([(i, self.epoch) for i in list(super().__iter__())[self.skip:]])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def read_state(path: Path) -> dict:
    """A ``last.pt`` written by this engine; PretrainError naming the file otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise PretrainError(f"cannot read training state {path}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise PretrainError(f"{path} is not a mosmos-pretrain training state (last.pt)")
    return state


__all__ = ["ResumableSampler", "STATE_FORMAT", "read_state", "rng_state", "seed_all", "set_rng_state"]
