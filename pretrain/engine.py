"""The pre-training loop: data, DDP, AdamW + warm-up/cosine, logging, atomic resumable state.

Design points (why):
- Progress is counted in optimizer *steps*; an epoch is ``len(train) // (batch * world)`` steps.
  The sample order of epoch e is a pure function of (seed, e), and a sample's augmentation of
  (seed, e, index), so ``--resume`` restarts mid-epoch on exactly the batch that came next.
- ``last.pt`` holds model (without the frozen text encoder), optimizer, scheduler, grad scaler,
  step, every rank's RNG states and the history; it is written atomically every ``--save-every``
  steps and on SIGINT/SIGTERM, so whatever kills the run, the file is complete.
- A signal only sets a flag; the current step finishes, all ranks agree (one all-reduce) and stop
  at the same step, rank 0 saves. A second signal kills at once (the last save is still intact).
- Evaluation (tag mAP, contrastive loss and retrieval on the held-out split, ``monitor.py``) runs
  on rank 0 only.
"""
from __future__ import annotations

import math
import os
import random
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from nnunet_mosmos.checkpoint import atomic_torch_save, save_mosmos_checkpoint
from nnunet_mosmos.tags import TagVocabulary
from nnunet_mosmos.text import DEFAULT_N_CTX, TextEncoder
from pretrain.datasets import PairDataset, collate_pairs, describe_source, is_volume, load_pairs, split_pairs
from pretrain.grounding import OrganGrounding
from pretrain.label_names import LabelNamesError, load_label_names
from pretrain.losses import TERMS, PretrainLoss
from pretrain.monitor import RunLog, evaluate, plot_progress
from pretrain.model import PretrainModel
from pretrain.plans import ZSCORE, PlansError, default_output, encoder_spec, find_dataset_folder, load_configuration
from pretrain.transforms import PairTransform

STATE_FORMAT = "nnunet-mosmos-pretrain-state"
GRAD_CLIP = 1.0
#: MOSMOS' own losses are always on (weights may be 0); the others are added with --objective
OBJECTIVES = ("mosmos", "organ-grounded", "negative-free")


@dataclass
class PretrainConfig:
    """Everything a run depends on (the CLI fills it; tests may build it directly)."""
    data: str = "synthetic"
    roco_root: str | None = None
    split: str = "train"
    subset: str = "radiology"
    manifest: str | None = None
    text_encoder: str | None = None
    dataset: str | None = None
    configuration: str | None = None
    plans: str = "nnUNetPlans"
    image_size: list | None = None
    batch_size: int = 32
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    contrastive_weight: float = 1.0
    tag_weight: float = 1.0
    num_workers: int = 4
    device: str = "auto"
    seed: int = 0
    resume: str | None = None
    output: str | None = None
    val_fraction: float = 0.05
    save_every: int = 500
    eval_every: int | None = None
    log_every: int = 10
    stop_after: int | None = None
    amp: str = "auto"
    keep_untagged: bool = False
    vocabulary: str | None = None
    embed_dim: int = 256
    decoder: dict = field(default_factory=dict)
    n_ctx: int = DEFAULT_N_CTX
    progress_bar: bool = True
    command: str = ""
    # hospital-shaped data (docs/pretraining.md, "3D reports and the extra objectives")
    ct_rate_root: str | None = None
    dim: str = "auto"  # "auto", "2" or "3"
    objectives: list = field(default_factory=lambda: ["mosmos"])
    organ_weight: float = 1.0
    negative_free_weight: float = 0.01
    label_names: str | None = None
    label_map_key: str | None = None
    abnormality_dictionary: str | None = None
    negatives_per_organ: int = 2
    text_generator: str | None = None


class PretrainError(ValueError):
    """A run cannot start or continue (bad option, too little data, bad last.pt); message says why."""


# --------------------------------------------------------------------------- distributed / device
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


def _all_reduce_mean(values: list[float], rt: Runtime) -> list[float]:
    if not rt.ddp:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return (t / rt.world).tolist()


def _all_gather_object(obj, rt: Runtime) -> list:
    if not rt.ddp:
        return [obj]
    out = [None] * rt.world
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- data order
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


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- schedule / optimizer
def lr_lambda(warmup: int, total: int):
    """Linear warm-up to the base LR over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no decay on biases, norms, the prompt context and the temperature (CLIP convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name in ("logit_scale", "prompt.ctx") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6,
                             foreach=True)


# --------------------------------------------------------------------------- the run
class Trainer:
    def __init__(self, cfg: PretrainConfig, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.spec = encoder_spec(cfg.dataset, cfg.configuration, cfg.plans, cfg.image_size)
        self.output = resolve_output(cfg, self.spec)
        self.run_dir = self.output.parent / f"{self.output.stem}_run"
        self.log = RunLog(self.run_dir, rt.main)
        self.stop_signal: int | None = None

    # ---- setup
    def setup(self) -> None:
        cfg, rt = self.cfg, self.rt
        unknown = sorted(set(cfg.objectives) - set(OBJECTIVES))
        if unknown:
            raise PretrainError(f"unknown --objective {unknown}; choose from {list(OBJECTIVES)}")
        try:
            vocab = TagVocabulary.from_json(cfg.vocabulary) if cfg.vocabulary else TagVocabulary.default()
        except ValueError as e:
            raise PretrainError(str(e)) from None
        negative_free = "negative-free" in cfg.objectives
        self.source = load_pairs(cfg.data, roco_root=cfg.roco_root, split=cfg.split, subset=cfg.subset,
                                 manifest=cfg.manifest, dataset=cfg.dataset, vocabulary=vocab,
                                 keep_untagged=cfg.keep_untagged, ct_rate_root=cfg.ct_rate_root,
                                 allow_missing_text=negative_free)
        self.dim = resolve_dim(cfg, self.source.pairs, self.spec)
        if self.dim == 3:
            self.spec = encoder_spec(cfg.dataset, cfg.configuration, cfg.plans, cfg.image_size, dim=3)
        train, val = split_pairs(self.source.pairs, cfg.val_fraction, cfg.seed)
        # every input check comes before the first log line: a run refused on its input writes nothing
        self.grounding = self._grounding(train, vocab) if "organ-grounded" in cfg.objectives else None
        self.train_set, self.val_set = self._datasets(train, val, vocab, negative_free)
        self.log(describe_source(self.source))
        self.log(f"Split: {len(train)} training / {len(val)} held-out pairs (--val-fraction {cfg.val_fraction})")
        for note in self.dicom_notes:
            self.log(note)
        if self.grounding is not None:
            self.log(self.grounding.describe())
        per_rank = len(train) // rt.world
        self.steps_per_epoch = per_rank // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise PretrainError(f"{len(train)} training pairs are too few for --batch-size {cfg.batch_size} on "
                                f"{rt.world} process(es); lower --batch-size (or --val-fraction)")
        if negative_free and cfg.batch_size < 2:
            raise PretrainError("--objective negative-free standardises projections over the batch: use "
                                "--batch-size 2 or more")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, max(1, self.total_steps // 20))
        self.tag_weight = cfg.tag_weight

        _seed_all(cfg.seed)  # identical initial weights on every rank
        text = TextEncoder(cfg.text_encoder).to(rt.device)
        self.build_training(build_model(self.spec, text, vocab.names, cfg).to(rt.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.warmup, self.total_steps))
        self.step, self.history, self.val_history, self.unreadable = 0, [], [], set()
        _seed_all(cfg.seed + rt.rank)  # dropout differs per rank, as it should
        if cfg.resume:
            self._load_state(self._resume_path())
        # organ pairs vary per batch (a batch may have none): DDP must tolerate an unused organ head
        self.net = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=self.grounding is not None) if rt.ddp else self.model
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        where = (f"; plans {self.spec.target['dataset']}/{self.spec.target['plans']}/"
                 f"{self.spec.target['configuration']}" if self.spec.target else " (default topology)")
        size = "patch" if self.dim == 3 else "image size"
        self.log(f"Encoder: {self.spec.arch_class_name.rsplit('.', 1)[-1]} {self.dim}D, stages "
                 f"{self.spec.arch_kwargs['features_per_stage']}, {size} {self.spec.image_size}, tag decoder on "
                 f"stage {self.model.stage}{where}")
        if self.dim == 3:
            self.log(f"Volumes: spacing {self.spec.spacing or 'native (no resampling)'}, normalisation "
                     f"{self.train_set.normalizer.describe()}")
        self.log(f"Text encoder {text.name_or_path} (frozen, dim {text.dim}); {n_params / 1e6:.2f} M trainable "
                 f"parameters; {rt.world} process(es) on {rt.device}, amp {rt.amp_dtype}")
        self.log(f"Schedule: {self.total_steps} steps ({self.steps_per_epoch} per epoch), warm-up {self.warmup}, "
                 f"lr {cfg.lr}, weight decay {cfg.weight_decay}, batch {cfg.batch_size} x {rt.world}, loss = "
                 f"{self.criterion_formula()}")
        self.log(f"Output {self.output}; run folder {self.run_dir}")

    def build_training(self, model: PretrainModel) -> None:
        """Loss, AdamW and grad scaler for ``model`` as the config asks (also used by scripts/bench_pretrain.py,
        so the benchmark times exactly this step)."""
        cfg = self.cfg
        self.model = model
        self.criterion = PretrainLoss(cfg.contrastive_weight, cfg.tag_weight, cfg.organ_weight,
                                      cfg.negative_free_weight)
        self.optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.rt.amp_dtype == torch.float16 else None

    def criterion_formula(self) -> str:
        cfg = self.cfg
        terms = [f"{cfg.contrastive_weight} * contrastive", f"{self.tag_weight} * tag"]
        if "organ-grounded" in cfg.objectives:
            terms.append(f"{cfg.organ_weight} * organ-grounded")
        if "negative-free" in cfg.objectives:
            terms.append(f"{cfg.negative_free_weight} * barlow-twins (2 views)")
        return " + ".join(terms)

    def _label_names(self) -> dict:
        try:
            return self._find_label_names()
        except LabelNamesError as e:
            raise PretrainError(str(e)) from None

    def _find_label_names(self) -> dict:
        cfg = self.cfg
        if cfg.label_names:
            return load_label_names(cfg.label_names, cfg.label_map_key)
        for var in ("nnUNet_raw", "nnUNet_preprocessed"):
            if cfg.dataset is None:
                break
            try:
                folder = find_dataset_folder(cfg.dataset, (var,))
            except PlansError:
                continue
            if (folder / "dataset.json").is_file():
                return load_label_names(folder / "dataset.json")
        raise PretrainError("--objective organ-grounded needs the names of the mask's label values: pass "
                            "--label-names (nnU-Net dataset.json, a {value: name} JSON, or TotalSegmentator's class "
                            "map with --label-map-key total) or -d of a dataset whose dataset.json names them")

    def _grounding(self, train, vocab):
        from nnunet_mosmos.reports import AbnormalityDictionary

        if self.dim != 3:
            raise PretrainError("--objective organ-grounded pools features inside organ masks of 3D volumes: give "
                                "manifest rows with a 'mask' column and pre-train in 3D (-c 3d_fullres or --dim 3)")
        try:
            dictionary = AbnormalityDictionary.from_json(self.cfg.abnormality_dictionary, vocabulary=vocab) \
                if self.cfg.abnormality_dictionary else AbnormalityDictionary.default()
        except ValueError as e:
            raise PretrainError(str(e)) from None
        grounding = OrganGrounding(train, self._label_names(), vocab, dictionary, self.cfg.negatives_per_organ,
                                   seed=self.cfg.seed)
        if grounding.usable == 0:
            raise PretrainError("--objective organ-grounded: no training pair has both a mask and a sentence naming "
                                "one of its organs.\n" + grounding.describe())
        return grounding

    def _datasets(self, train, val, vocab, two_views: bool):
        cfg = self.cfg
        self.dicom_notes = []
        generator = None
        if two_views:
            from nnunet_mosmos.reports import load_text_generator

            try:
                generator = load_text_generator(cfg.text_generator)
            except ValueError as e:
                raise PretrainError(str(e)) from None
        num_tags = len(vocab)
        if self.dim == 2:
            return (PairDataset(train, num_tags, PairTransform(self.spec.image_size, train=True), cfg.seed,
                                two_views=two_views, text_for_missing=generator, vocabulary=vocab),
                    PairDataset(val, num_tags, PairTransform(self.spec.image_size, train=False), cfg.seed,
                                text_for_missing=generator, vocabulary=vocab))
        from pretrain.volumes import (Normalizer, PatchSampler, VolumePairDataset, check_pair_geometry,
                                      pick_dicom_series)

        for pair in train + val:  # header reads only: a wrong mask stops the run before step 1
            if pair.mask is not None:
                check_pair_geometry(pair.image, pair.mask)
            if pair.image.is_dir():  # say which series of a DICOM folder is used (the rule: most slices)
                self.dicom_notes.append(pick_dicom_series(pair.image)[1])
        norm = self.spec.normalization or {"scheme": ZSCORE, "intensity_properties": None}
        try:
            normalizer = Normalizer(norm["scheme"], norm["intensity_properties"])
        except ValueError as e:
            raise PretrainError(str(e)) from None
        names = None  # label value -> name, for generated text ("liver (1510 mL)") and grounding
        if any(p.mask is not None for p in train):
            try:
                names = self._label_names()
            except PretrainError:
                if self.grounding is not None:
                    raise
                names = None  # generated text then says "label_5"; only organ grounding needs names
        make = lambda pairs, is_train, views: VolumePairDataset(  # noqa: E731
            pairs, num_tags, PatchSampler(self.spec.image_size, self.spec.spacing, train=is_train), normalizer,
            cfg.seed, two_views=views, label_names=names, text_for_missing=generator, vocabulary=vocab)
        return make(train, True, two_views), make(val, False, False)

    def _resume_path(self) -> Path:
        path = self.run_dir / "last.pt" if self.cfg.resume in ("auto", "", True) else Path(self.cfg.resume)
        if not path.is_file():
            raise PretrainError(f"nothing to resume: {path} does not exist (start without --resume)")
        return path

    # ---- state
    def _state(self) -> dict:
        rngs = _all_gather_object(_rng_state(), self.rt)
        cfg = asdict(self.cfg)
        return {"format": STATE_FORMAT, "version": 1, "model": self.model.trainable_state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "step": self.step,
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "world_size": self.rt.world,
                "rng": rngs, "history": self.history, "val_history": self.val_history,
                "unreadable": sorted(self.unreadable), "config": cfg}

    def save_state(self) -> None:
        state = self._state()  # collective: every rank takes part
        if self.rt.main:
            atomic_torch_save(state, self.run_dir / "last.pt")
            plot_progress(self.run_dir / "progress.png", self.history, self.val_history)
        if self.rt.ddp:
            dist.barrier()

    def _load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise PretrainError(f"cannot read training state {path}: {e}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise PretrainError(f"{path} is not a mosmos-pretrain training state (last.pt)")
        if (state["steps_per_epoch"], state["total_steps"]) != (self.steps_per_epoch, self.total_steps):
            self.log(f"WARNING: resuming with a different schedule (was {state['total_steps']} steps, "
                     f"{state['steps_per_epoch']} per epoch; now {self.total_steps}, {self.steps_per_epoch})")
        try:
            self.model.load_trainable_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise PretrainError(f"{path} was written for a different model or data (encoder, text encoder or "
                                f"vocabulary changed?): {e}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.history, self.val_history = state["step"], state["history"], state["val_history"]
        self.unreadable = set(state.get("unreadable", []))
        if state["world_size"] == self.rt.world:
            _set_rng_state(state["rng"][self.rt.rank])
        else:
            self.log(f"WARNING: resuming on {self.rt.world} processes, saved on {state['world_size']}: "
                     "RNG streams restart, the run will not repeat bit for bit")
        self.log(f"Resumed from {path} at step {self.step}")

    # ---- loop
    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        sampler = ResumableSampler(len(self.train_set), self.rt.world, self.rt.rank, self.cfg.seed)
        sampler.set_position(epoch, skip_batches * self.cfg.batch_size)
        return DataLoader(self.train_set, self.cfg.batch_size, sampler=sampler, num_workers=self.cfg.num_workers,
                          collate_fn=collate_pairs, drop_last=True, pin_memory=self.rt.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _val_loader(self) -> DataLoader:
        return DataLoader(self.val_set, self.cfg.batch_size, shuffle=False, num_workers=self.cfg.num_workers,
                          collate_fn=collate_pairs, generator=torch.Generator().manual_seed(self.cfg.seed))

    def train_step(self, batch: dict) -> list[float]:
        rt = self.rt
        images = batch["image"].to(rt.device, non_blocking=True)
        tags = batch["tags"].to(rt.device, non_blocking=True)
        view2 = batch["view2"].to(rt.device, non_blocking=True) if "view2" in batch else None
        organs = None
        if self.grounding is not None:
            organs = self.grounding.batch(batch["mask"].to(rt.device, non_blocking=True), batch["index"])
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None):
            out = self.net(images, batch["text"], view2=view2, organs=organs)
            losses = self.criterion(out, tags)
        if self.scaler:
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], GRAD_CLIP)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return [losses["loss"].detach().item(), *(losses[t].item() for t in TERMS),
                1.0 / out["logit_scale"].detach().item()]

    def _handle_signal(self, signum, frame) -> None:
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
        self.log(f"Received {signal.Signals(signum).name}: finishing step {self.step + 1}, then saving last.pt")

    def _should_stop(self, started_at: int) -> bool:
        flag = float(self.stop_signal is not None)
        if self.rt.ddp:
            t = torch.tensor([flag], device=self.rt.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = float(t.item())
        chunk_done = self.cfg.stop_after is not None and self.step - started_at >= self.cfg.stop_after
        return flag > 0 or chunk_done

    def _evaluate(self) -> None:
        if self.rt.main and len(self.val_set):
            result = {"step": self.step, **evaluate(self.model, self._val_loader(), self.criterion, self.rt)}
            self.val_history.append(result)
            self.log(f"step {self.step}: held-out tag mAP {result['val_map']:.4f}, recall@1 "
                     f"{result['val_recall1']:.3f}, contrastive {result['val_contrastive']:.4f}, "
                     f"tag {result['val_tag']:.4f}")
        if self.rt.ddp:
            dist.barrier()

    def _log_interval(self, sums: list[float], n: int) -> None:
        avg = _all_reduce_mean([s / max(n, 1) for s in sums], self.rt)
        entry = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": avg[0],
                 **dict(zip(TERMS, avg[1:-1])), "temperature": avg[-1], "lr": self.optimizer.param_groups[0]["lr"]}
        self.history.append(entry)
        terms = " ".join(f"{t} {entry[t]:.4f}" for t in TERMS if t in ("contrastive", "tag") or entry[t])
        self.log(f"step {self.step}/{self.total_steps} (epoch {entry['epoch']:.2f}): loss {avg[0]:.4f} "
                 f"{terms} temperature {avg[-1]:.4f} lr {entry['lr']:.2e}")

    def fit(self) -> int:
        """Train to ``total_steps`` (or until a signal / --stop-after); return the exit code."""
        cfg, rt = self.cfg, self.rt
        handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        width = len(TERMS) + 2  # loss, the terms, temperature
        started_at, sums, n = self.step, [0.0] * width, 0
        eval_every = cfg.eval_every or cfg.save_every
        bar = None
        if rt.main and cfg.progress_bar:
            from tqdm import tqdm

            bar = self.log.bar = tqdm(total=self.total_steps, initial=self.step, desc="mosmos-pretrain",
                                      dynamic_ncols=True, file=sys.stdout)
        self.net.train()
        stopped = False
        try:
            while self.step < self.total_steps and not stopped:
                epoch, within = divmod(self.step, self.steps_per_epoch)
                iterator = iter(self._loader(epoch, within))
                while self.step < self.total_steps:
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        break
                    except RuntimeError:
                        if self.stop_signal is None:  # workers die on Ctrl-C; anything else is real
                            raise
                        stopped = True
                        self.save_state()
                        break
                    self.unreadable.update(batch["failed"])
                    values = self.train_step(batch)
                    self.step += 1
                    sums, n = [a + b for a, b in zip(sums, values)], n + 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{values[0]:.3f}", T=f"{values[-1]:.3f}")
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        self._log_interval(sums, n)
                        sums, n = [0.0] * width, 0
                    stopped = self._should_stop(started_at)
                    if self.step % cfg.save_every == 0 or stopped or self.step == self.total_steps:
                        self.save_state()
                    if stopped:
                        break
                    if self.step % eval_every == 0 and self.step < self.total_steps:
                        self._evaluate()
                del iterator
        finally:
            if bar is not None:
                bar.close()
                self.log.bar = None
            for s, h in handlers.items():
                signal.signal(s, h)
        if stopped:
            how = signal.Signals(self.stop_signal).name if self.stop_signal else f"--stop-after {cfg.stop_after}"
            self.log(f"Stopped ({how}) at step {self.step}/{self.total_steps}; state saved to "
                     f"{self.run_dir / 'last.pt'}. Continue with the same command plus --resume.")
            self._report_unreadable()
            return 128 + self.stop_signal if self.stop_signal else 0
        self._evaluate()
        self._report_unreadable()
        if rt.main:
            from pretrain.export import build_payload

            plot_progress(self.run_dir / "progress.png", self.history, self.val_history)  # with the last eval
            payload = build_payload(self)
            save_mosmos_checkpoint(self.output, payload)
            self.log(f"Wrote {self.output}")
        if rt.ddp:
            dist.barrier()
        return 0

    def _report_unreadable(self) -> None:
        gathered = set().union(*_all_gather_object(sorted(self.unreadable), self.rt))
        self.unreadable = gathered
        self.log(self.source.skipped.summary("Skipped before training"))
        if gathered:
            self.log(f"Unreadable images replaced by the next pair: {len(gathered)}\n  " +
                     "\n  ".join(sorted(gathered)[:10]))
        else:
            self.log("Unreadable images: none")


def build_model(spec, text: TextEncoder, tag_names: list[str], cfg: PretrainConfig) -> PretrainModel:
    """The PretrainModel a run of ``cfg`` trains (encoder of ``spec``, heads of ``cfg.objectives``)."""
    return PretrainModel(spec, text, tag_names, cfg.embed_dim, cfg.decoder, cfg.n_ctx, objectives=cfg.objectives)


def resolve_dim(cfg: PretrainConfig, pairs, spec) -> int:
    """2 or 3 from ``--dim``. ``auto``: 3 when every pair's image is a volume (or DICOM folder) and the
    target is 3D (a 3D ``-c``, a 3-value ``--image-size``, or CT-RATE without ``-c``); else 2, which
    keeps the 2D-twin route (random axial slices, export inflated)."""
    wanted = str(cfg.dim)
    if wanted not in ("auto", "2", "3"):
        raise PretrainError(f"--dim must be auto, 2 or 3, got {cfg.dim!r}")
    flat = [p for p in pairs if not (is_volume(p.image) or p.image.is_dir())]
    folders = [p for p in pairs if p.image.is_dir()]
    if wanted == "2":
        if folders:
            raise PretrainError(f"{folders[0].image} is a DICOM folder: DICOM series are read in 3D only (--dim 3)")
        return 2
    if wanted == "3":
        if flat:
            raise PretrainError(f"--dim 3 needs volumes, but {flat[0].id} points to the 2D image {flat[0].image}; "
                                "remove 2D rows from the manifest or pre-train in 2D (--dim 2)")
        return 3
    if flat or not pairs:
        if folders:
            raise PretrainError(f"the data mix 2D images and DICOM folders ({folders[0].image}); pre-train the "
                                "volumes in 3D (--dim 3) without the 2D rows")
        return 2
    if cfg.configuration:
        cm, _ = load_configuration(cfg.dataset, cfg.configuration, cfg.plans)
        return 3 if len(cm.patch_size) == 3 else 2
    if cfg.image_size and len(cfg.image_size) == 3:
        return 3
    return 3 if cfg.data == "ct-rate" or folders else 2


def resolve_output(cfg: PretrainConfig, spec) -> Path:
    if cfg.output:
        return Path(cfg.output)
    if spec.target:
        return default_output(spec.target)
    raise PretrainError("no output file: pass -o/--output FILE.pt, or -d/-c to write to the dataset's "
                        "$nnUNet_preprocessed/DatasetXXX_Name/mosmos_pretrained/ folder")


def run(cfg: PretrainConfig) -> int:
    rt = setup_runtime(cfg.device, cfg.amp)
    try:
        trainer = Trainer(cfg, rt)
        trainer.setup()
        return trainer.fit()
    finally:
        if rt.ddp and dist.is_initialized():
            dist.destroy_process_group()
