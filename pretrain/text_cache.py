"""The frozen text encoder's report embeddings, computed once per caption instead of once per batch.

Why: the report encoder is frozen (``pretrain/model.py``), so its mean-pooled output is a pure function
of the caption; every epoch used to run it again on every report (and on the organ-grounded
objective's sentences and dictionary phrases). The cache keeps those features, keyed by the
caption's SHA-1, on the encoder's device; the trainable ``text_proj`` is still applied on top at
every step, so gradients are unchanged. Memory: ``dim`` floats per distinct caption (384-d MiniLM:
1.5 KB, 150 MB for 100,000 captions); ``--no-report-cache`` turns it off.

Exactness: a caption met for the first time is encoded together with the batch's other new captions,
and a batched forward can differ from another batch composition in the last float bit. So that
``--resume`` repeats a run bit for bit, each rank's cache is saved next to ``last.pt``
(``report_embeddings.rank<R>.pt``: text-encoder name, caption hashes and features, in the order the
captions were first seen) and ``last.pt`` records how many rows were valid at its step; a resumed
run reloads exactly that prefix. Each DDP rank has its own cache (its own captions), saved to its
own file. Only training uses the cache: held-out evaluation encodes as before and adds nothing.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

CACHE_FORMAT = "nnunet-mosmos-report-embeddings"


def caption_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def cache_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"report_embeddings.rank{rank}.pt"


class ReportEmbeddingCache:
    """``cache(texts)`` == ``text_encoder.encode(texts)`` (up to float rounding), each caption encoded once."""

    def __init__(self, text_encoder):
        self.encoder = text_encoder
        self.rows: dict[str, int] = {}  # caption hash -> row, rows in the order captions were first seen
        self.features: list[torch.Tensor] = []
        self.hits = self.misses = 0
        self.saved_rows = 0

    def __len__(self) -> int:
        return len(self.features)

    def identity(self) -> dict:
        return {"text_encoder": str(self.encoder.name_or_path), "max_length": int(self.encoder.max_length)}

    @torch.no_grad()
    def __call__(self, texts) -> torch.Tensor:
        keys = [caption_key(t) for t in texts]
        new = {}
        for key, text in zip(keys, texts):
            if key not in self.rows and key not in new:
                new[key] = text
        if new:
            encoded = self.encoder.encode(list(new.values())).detach()
            for key, feature in zip(new, encoded):
                self.rows[key] = len(self.features)
                self.features.append(feature)
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        device = self.encoder.device
        return torch.stack([self.features[self.rows[k]] for k in keys]).to(device)

    def state_dict(self) -> dict:
        keys = sorted(self.rows, key=self.rows.get)
        features = torch.stack(self.features).cpu() if self.features else torch.zeros(0)
        return {"format": CACHE_FORMAT, **self.identity(), "keys": keys, "features": features}

    def save(self, run_dir: Path, rank: int) -> str | None:
        """Write rank ``rank``'s file when the cache grew since the last save; the reason when it could not."""
        if len(self) == self.saved_rows:
            return None
        from nnunet_mosmos.checkpoint import atomic_torch_save

        try:
            atomic_torch_save(self.state_dict(), cache_file(run_dir, rank))
        except OSError as e:  # an optimisation only: the run goes on, a resume re-encodes (and says so)
            return f"cannot write {cache_file(run_dir, rank)} ({e.strerror or e})"
        self.saved_rows = len(self)
        return None

    def load(self, folder: Path, rank: int, rows: int) -> str | None:
        """Reload the first ``rows`` entries of rank ``rank``'s file in ``folder``; the reason when it cannot."""
        path = cache_file(folder, rank)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return f"{path} is missing"
        except Exception as e:  # noqa: BLE001 - a damaged cache only costs re-encoding
            return f"{path} is unreadable ({type(e).__name__})"
        problem = self.load_state_dict(state, rows)
        return problem and f"{path} {problem}"

    def load_state_dict(self, state: dict, rows: int) -> str | None:
        """Take the first ``rows`` entries of a saved cache; a reason (for the log) when it cannot be used."""
        if not isinstance(state, dict) or state.get("format") != CACHE_FORMAT:
            return "not a report-embedding cache"
        if {k: state.get(k) for k in self.identity()} != self.identity():
            return f"written for text encoder {state.get('text_encoder')} (max_length {state.get('max_length')})"
        if len(state["keys"]) < rows:
            return f"holds {len(state['keys'])} captions, last.pt expects {rows}"
        device = self.encoder.device
        self.rows = {k: i for i, k in enumerate(state["keys"][:rows])}
        self.features = [f.to(device) for f in state["features"][:rows]]
        self.saved_rows = rows
        return None


__all__ = ["CACHE_FORMAT", "ReportEmbeddingCache", "cache_file", "caption_key"]
