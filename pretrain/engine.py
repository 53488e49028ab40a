"""The pre-training loop: set up from a config, then train step by step with resumable, atomic saves.

Read top to bottom: :meth:`Trainer.setup` (data, encoder, model, optimizer; every input check before the
first log line), :meth:`Trainer.train_step` (one optimizer step), :meth:`Trainer.fit` (the loop, logging,
evaluation, saving, signals). The pieces live in their own modules: ``config`` (PretrainConfig),
``data`` (pairs -> data sets), ``distributed`` (device, DDP, collectives), ``optim`` (AdamW + schedule),
``state`` (data order, RNG, last.pt), ``run_folder`` (where files go), ``monitor`` (evaluation, log, plot).

Design points (why):
- Progress is counted in optimizer *steps*; an epoch is ``len(train) // (batch * world)`` steps.
- ``last.pt`` is written atomically every ``--save-every`` steps, at the end and on SIGINT/SIGTERM, so
  whatever kills the run, the file is complete.
- A signal only sets a flag; the current step finishes, all ranks agree (one all-reduce) and stop
  at the same step, rank 0 saves. A second signal kills at once (the last save is still intact).
- Evaluation (tag mAP, contrastive loss and retrieval on the held-out split) runs on rank 0 only.
"""
from __future__ import annotations

import signal
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from nnunet_mosmos.checkpoint import save_mosmos_checkpoint
from nnunet_mosmos.tags import TagVocabulary
from nnunet_mosmos.text import TextEncoder
from pretrain.config import OBJECTIVES, PretrainConfig, PretrainError
from pretrain.data import build_datasets, build_grounding, resolve_dim
from pretrain.datasets import collate_pairs
from pretrain.distributed import Runtime, all_gather_object, all_reduce_mean, broadcast_object, setup_runtime
from pretrain.losses import TERMS, PretrainLoss
from pretrain.model import PretrainModel
from pretrain.monitor import RunLog, evaluate, plot_progress
from pretrain.optim import GRAD_CLIP, lr_lambda, make_optimizer
from pretrain.pairs import describe_source, split_pairs
from pretrain.plans import check_input_size, encoder_spec
from pretrain.run_folder import RunFolder, check_output, resolve_output
from pretrain.sources import load_pairs
from pretrain.state import STATE_FORMAT, ResumableSampler, read_state, rng_state, seed_all, set_rng_state
from pretrain.text_cache import ReportEmbeddingCache


class Trainer:
    def __init__(self, cfg: PretrainConfig, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.spec = encoder_spec(cfg.dataset, cfg.configuration, cfg.plans, cfg.image_size)
        self.output = resolve_output(cfg, self.spec)
        self.folder = RunFolder(self.output)
        self.run_dir = self.folder.path
        self.log = RunLog(self.run_dir, rt.main)
        self.stop_signal: int | None = None

    def on_main(self, fn, *args):
        """``fn(*args)`` on rank 0 only, its result on every rank. When it fails, every rank stops with it
        (rank 0 with the error itself, the others with its message) instead of waiting at the next collective."""
        outcome, error = None, None
        if self.rt.main:
            try:
                outcome = ("ok", fn(*args))
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks were told
                error, outcome = e, ("error", str(e))
        kind, value = broadcast_object(outcome, self.rt)
        if error is not None:
            raise error
        if kind == "error":
            raise PretrainError(f"rank 0: {value}")
        return value

    # ---- setup
    def setup(self) -> None:
        """Every check first (output, data, sizes, schedule, resume), then the lock and the first log line:
        a run refused on its input writes nothing."""
        cfg, rt = self.cfg, self.rt
        if cfg.resume and cfg.overwrite:
            raise PretrainError("--resume continues the earlier run and --overwrite discards it: choose one")
        self.on_main(check_output, self.output)
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
        self.dim = resolve_dim(cfg, self.source.pairs)
        if self.dim == 3:
            self.spec = encoder_spec(cfg.dataset, cfg.configuration, cfg.plans, cfg.image_size, dim=3)
        check_input_size(self.spec, "--image-size" if cfg.image_size else "the configuration's patch size")
        train, val = split_pairs(self.source.pairs, cfg.val_fraction, cfg.seed)
        organ_grounded = "organ-grounded" in cfg.objectives
        self.grounding = build_grounding(cfg, self.dim, train, vocab) if organ_grounded else None
        self.train_set, self.val_set, self.dicom_notes = build_datasets(cfg, self.spec, self.dim, train, val, vocab,
                                                                        negative_free, organ_grounded)
        self.steps_per_epoch = len(train) // rt.world // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise PretrainError(f"{len(train)} training pairs are too few for --batch-size {cfg.batch_size} on "
                                f"{rt.world} process(es); lower --batch-size (or --val-fraction)")
        if negative_free and cfg.batch_size < 2:
            raise PretrainError("--objective negative-free standardises projections over the batch: use "
                                "--batch-size 2 or more")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, max(1, self.total_steps // 20))
        self.tag_weight = cfg.tag_weight
        resume_from = self._resume_path() if cfg.resume else None

        notes = self.on_main(self.folder.claim, bool(cfg.resume), cfg.overwrite)  # the first write
        for line in notes:
            self.log(line)
        self.log(describe_source(self.source))
        self.log(f"Split: {len(train)} training / {len(val)} held-out pairs (--val-fraction {cfg.val_fraction})")
        for note in self.dicom_notes:
            self.log(note)
        if self.grounding is not None:
            self.log(self.grounding.describe())

        seed_all(cfg.seed)  # identical initial weights on every rank
        text = TextEncoder(cfg.text_encoder).to(rt.device)
        self.build_training(build_model(self.spec, text, vocab.names, cfg).to(rt.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.warmup, self.total_steps))
        self.step, self.history, self.val_history, self.unreadable, self.constant = 0, [], [], set(), set()
        seed_all(cfg.seed + rt.rank)  # dropout differs per rank, as it should
        if resume_from is not None:
            self._load_state(resume_from)
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
        else:
            self.log("Images: z-score per image (per volume for slices)" + (
                ", inside the non-zero region (the plans' use_mask_for_norm)" if self.train_set.normalize else ""))
        self.log(f"Text encoder {text.name_or_path} (frozen, dim {text.dim}); {n_params / 1e6:.2f} M trainable "
                 f"parameters; {rt.world} process(es) on {rt.device}, amp {rt.amp_dtype}")
        own_lr = "" if cfg.tag_decoder_lr is None else f" (tag decoder {cfg.tag_decoder_lr})"
        self.log(f"Schedule: {self.total_steps} steps ({self.steps_per_epoch} per epoch), warm-up {self.warmup}, "
                 f"lr {cfg.lr}{own_lr}, weight decay {cfg.weight_decay}, batch {cfg.batch_size} x {rt.world}, loss = "
                 f"{self.criterion_formula()}")
        self.log(f"Output {self.output}; run folder {self.run_dir}")

    def build_training(self, model: PretrainModel) -> None:
        """Loss, AdamW and grad scaler for ``model`` as the config asks (also used by scripts/bench_pretrain.py,
        so the benchmark times exactly this step)."""
        cfg = self.cfg
        self.model = model
        self.criterion = PretrainLoss(cfg.contrastive_weight, cfg.tag_weight, cfg.organ_weight,
                                      cfg.negative_free_weight)
        self.optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.tag_decoder_lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.rt.amp_dtype == torch.float16 else None

    def criterion_formula(self) -> str:
        cfg = self.cfg
        terms = [f"{cfg.contrastive_weight} * contrastive", f"{self.tag_weight} * tag"]
        if "organ-grounded" in cfg.objectives:
            terms.append(f"{cfg.organ_weight} * organ-grounded")
        if "negative-free" in cfg.objectives:
            terms.append(f"{cfg.negative_free_weight} * barlow-twins (2 views)")
        return " + ".join(terms)

    def _resume_path(self) -> Path:
        path = self.run_dir / "last.pt" if self.cfg.resume in ("auto", "", True) else Path(self.cfg.resume)
        if not path.is_file():
            raise PretrainError(f"nothing to resume: {path} does not exist (start without --resume)")
        return path

    # ---- state
    def _state(self) -> dict:
        cache = self.model.report_cache
        ranks = all_gather_object({"rng": rng_state(), "report_cache": len(cache) if cache else 0}, self.rt)
        rngs = [r["rng"] for r in ranks]
        cfg = asdict(self.cfg)
        return {"format": STATE_FORMAT, "version": 1, "model": self.model.trainable_state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "step": self.step,
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "world_size": self.rt.world,
                "rng": rngs, "history": self.history, "val_history": self.val_history,
                "unreadable": sorted(self.unreadable), "constant": sorted(self.constant),
                "report_cache": [r["report_cache"] for r in ranks], "config": cfg}

    def _write_state(self, state: dict) -> None:
        self.folder.save(state, self.run_dir / "last.pt")
        plot_progress(self.run_dir / "progress.png", self.history, self.val_history)

    def _save_report_cache(self) -> None:
        """Every rank's own cache file, written before last.pt (which records how many rows are valid)."""
        cache = self.model.report_cache
        problem = cache.save(self.run_dir, self.rt.rank) if cache is not None else None
        if problem:
            print(f"mosmos-pretrain: warning: report-embedding cache: {problem}", file=sys.stderr, flush=True)

    def _load_report_cache(self, state: dict, folder: Path) -> None:
        cache, counts, rank = self.model.report_cache, state.get("report_cache") or [], self.rt.rank
        problem = None
        if cache is not None and state["world_size"] == self.rt.world == len(counts) and counts[rank]:
            problem = cache.load(folder, rank, counts[rank])
        for problem in filter(None, all_gather_object(problem and f"rank {rank}: {problem}", self.rt)):
            self.log(f"WARNING: report-embedding cache not reused ({problem}): reports are encoded again, equal "
                     "up to float rounding; the run will not repeat bit for bit")

    def save_state(self) -> None:
        self._save_report_cache()
        state = self._state()  # collective: every rank takes part
        self.on_main(self._write_state, state)  # also the barrier: no rank runs ahead of the save

    def _load_state(self, path: Path) -> None:
        state = read_state(path)
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
        self.constant = set(state.get("constant", []))
        self._load_report_cache(state, path.parent)
        if state["world_size"] == self.rt.world:
            set_rng_state(state["rng"][self.rt.rank])
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
        avg = all_reduce_mean([s / max(n, 1) for s in sums], self.rt)
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
                    self._note_constant(batch["constant"])
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
        self.on_main(self._export)
        return 0

    def _export(self) -> None:
        from pretrain.export import build_payload

        plot_progress(self.run_dir / "progress.png", self.history, self.val_history)  # with the last eval
        self.folder.save(build_payload(self), self.output,
                         writer=lambda payload, path: save_mosmos_checkpoint(path, payload))
        self.log(f"Wrote {self.output}")

    def _note_constant(self, images: list[str]) -> None:
        new = sorted(set(images) - self.constant)
        if new:
            self.constant.update(new)
            self.log(f"WARNING: constant (zero-variance) image(s), replaced by the next pair: {', '.join(new[:5])}"
                     + (f" and {len(new) - 5} more" if len(new) > 5 else ""))

    def _report_unreadable(self) -> None:
        gathered = set().union(*all_gather_object(sorted(self.unreadable), self.rt))
        constant = set().union(*all_gather_object(sorted(self.constant), self.rt))
        self.unreadable, self.constant = gathered, constant
        self.log(self.source.skipped.summary("Skipped before training"))
        if gathered:
            self.log(f"Unreadable images replaced by the next pair: {len(gathered)}\n  " +
                     "\n  ".join(sorted(gathered)[:10]))
        else:
            self.log("Unreadable images: none")
        if constant:
            self.log(f"Constant (zero-variance) images replaced by the next pair: {len(constant)}\n  " +
                     "\n  ".join(sorted(constant)[:10]))
        cache = self.model.report_cache
        if cache is not None:
            self.log(f"Report-embedding cache (rank 0): {len(cache)} distinct texts, {cache.hits} hits / "
                     f"{cache.misses} encoded in this invocation")


def build_model(spec, text: TextEncoder, tag_names: list[str], cfg: PretrainConfig) -> PretrainModel:
    """The PretrainModel a run of ``cfg`` trains (encoder of ``spec``, heads of ``cfg.objectives``, the report cache)."""
    model = PretrainModel(spec, text, tag_names, cfg.embed_dim, cfg.decoder, cfg.n_ctx, objectives=cfg.objectives)
    if cfg.report_cache:
        model.report_cache = ReportEmbeddingCache(text)
    return model


def run(cfg: PretrainConfig) -> int:
    rt = setup_runtime(cfg.device, cfg.amp)
    trainer = None
    try:
        trainer = Trainer(cfg, rt)
        trainer.setup()
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.folder.release()
        if rt.ddp and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["PretrainConfig", "PretrainError", "Trainer", "build_model", "run"]
