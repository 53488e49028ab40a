"""Overhead of MOSMOS over plain nnU-Net with identical plans: training step, inference, peak memory.

What is timed is the real code: a plain ``nnUNetTrainer`` and an ``nnUNetTrainerMOSMOS`` are built
from the same plans and ``dataset.json`` (no data on disk: nnU-Net's folders point at a temporary
workspace), initialised as ``nnUNetv2_train`` would, and their own ``train_step`` is called on one
synthetic batch (random image, random labels, nnU-Net's deep-supervision target list). Data loading
and augmentation are excluded on purpose: they are identical for both trainers. Inference is
nnU-Net's ``nnUNetPredictor.predict_sliding_window_return_logits`` on a random image about 2.25
patches large (4 tiles at step 0.5), with each trainer's ``build_network_architecture`` (deep
supervision off, as at prediction) and the trained weights.

Timings are interleaved in one process (plain, MOSMOS, MOSMOS, plain, ... after a warm-up) and
reported as medians; the ratio is ``median(MOSMOS) / median(plain)``. Because the machine may be
shared, the JSON also carries the median of the per-round ratios, the ratio of the minima and the
ratio of process CPU times, which are less sensitive to other people's load.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one step (minus what was allocated
before it) plus the tensors the variant keeps resident (weights, optimizer state, text encoder), so
the two variants living in one process do not count each other. On CPU there is no allocator
statistic, so by default each variant runs in a fresh subprocess and reports the growth of its
peak RSS over a baseline taken after imports (``--no-isolate-memory`` skips them; the CPU peak is
then reported as not measured, ``null``).

``--profile`` adds a per-module breakdown of one MOSMOS and one plain training step
(``torch.profiler``; backward ops are attributed to the module whose forward created them, through
the autograd sequence numbers). ``--lean`` adds the shipped lean branch (``nnUNetTrainerMOSMOS_lean``)
to the same interleaved run, ``--prototypes`` the design alternatives of :mod:`benchmarks.prototypes`
(class attributes of the shipped trainer, nothing patched); ``--real-size`` swaps the small default
plans for nnU-Net's typical ones (2d 512x512 batch 12, 3d_fullres 128x128x128 batch 2). The
helpers it shares with the other benchmarks (timing, records, plans, workspace) are in
:mod:`benchmarks.common`.

Run it as ``python scripts/bench_overhead.py [--quick] ...`` (or ``python -m benchmarks.overhead``);
see ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import numpy as np

from benchmarks.common import (DEFAULT_LABELS, PeakRSS, add_memory_options, build_trainer, cuda_step_peak_bytes,
                               emit_json, interleaved, json_default, machine, median_ms, plans_like,
                               plans_like_configuration, preimport_text_stack, read_plans, resident_bytes,
                               resolve_memory_options, run_memory_workers, sync, synthetic_plans, versions,
                               workspace_env)
from benchmarks.prototypes import PROTOTYPES, prototype_classes

TARGETS = {"train_step_s": 1.10, "inference_s": 1.05, "peak_mem_mb": 1.10}
PLAIN, MOSMOS, LEAN = "plain", "mosmos", "lean"
#: ``--lean``: the shipped lean branch, timed beside MOSMOS against the same plain baseline
LEAN_TRAINER = "nnUNetTrainerMOSMOS_lean"
#: --quick without --plans/--patch: built-in plans-like configurations, no planning needed
QUICK_PATCHES = {"2d": [32, 32], "3d_fullres": [16, 32, 32]}
#: --real-size: nnU-Net's typical plans (a 512x512 2d slice at batch 12 with 8 stages; a 128^3 3d_fullres
#: patch at batch 2 with 6 stages, 320 features at most), built by ``plans_like_configuration``
REAL_SIZE = {"2d": {"patch": [512, 512], "batch_size": 12, "max_stages": 8},
             "3d_fullres": {"patch": [128, 128, 128], "batch_size": 2}}


# ------------------------------------------------------------------------------ trainer classes
def trainer_class(name: str):
    """A trainer class by name: our prototypes, our trainers (shipped, then the benefit study's), then
    nnU-Net's own trainer folder."""
    protos = prototype_classes()
    if name in protos:
        return protos[name]
    import nnunet_mosmos.training as ours
    from benchmarks.study_trainers import nnunet_mosmos_study_trainers as study

    for module in (ours, study):
        if hasattr(module, name):
            return getattr(module, name)
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                      "nnunetv2.training.nnUNetTrainer")
    if cls is None:
        raise SystemExit(f"bench_overhead: trainer class {name} not found")
    return cls


def _unwrap(net):
    from torch._dynamo import OptimizedModule

    return net._orig_mod if isinstance(net, OptimizedModule) else net


def _maybe_compile_cpu(trainer, compile_: bool) -> None:
    """nnU-Net never compiles on CPU; ``--compile`` does it here (on CUDA nnU-Net's own path does)."""
    import torch
    from torch._dynamo import OptimizedModule

    if compile_ and not isinstance(trainer.network, OptimizedModule):
        trainer.network = torch.compile(trainer.network)


# ---------------------------------------------------------------------------------------- inputs
def deep_supervision_scales(configuration_manager) -> list:
    """What ``nnUNetTrainer._get_deep_supervision_scales`` returns (deep supervision on)."""
    return [list(i) for i in 1 / np.cumprod(np.vstack(configuration_manager.pool_op_kernel_sizes), axis=0)][:-1]


def synthetic_batch(configuration_manager, n_channels: int, n_labels: int, seed: int = 0, device=None) -> dict:
    """Random image + random labels at the plan's batch/patch size, targets as nnU-Net's DS list."""
    import torch
    import torch.nn.functional as F

    cm = configuration_manager
    patch = [int(p) for p in cm.patch_size]
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(cm.batch_size, n_channels, *patch, generator=g)
    seg = torch.randint(0, n_labels, (cm.batch_size, 1, *patch), generator=g).to(torch.int16)
    target = [seg if all(s == 1 for s in sc) else
              F.interpolate(seg.float(), [round(p * s) for p, s in zip(patch, sc)], mode="nearest-exact")
              .to(torch.int16) for sc in deep_supervision_scales(cm)]
    if device is not None:  # data loading (incl. the host->device copy) is excluded from the timing
        data = data.to(device)
        target = [t.to(device) for t in target]
    return {"data": data, "target": target}


def trainer_batch(trainer, seed: int = 0, device=None) -> dict:
    return synthetic_batch(trainer.configuration_manager, len(trainer.dataset_json["channel_names"]),
                           len(trainer.label_manager.all_labels), seed, device)


def inference_image(configuration_manager, n_channels: int, scale: float = 1.5, seed: int = 1):
    """Random image ``(c, z, y, x)``: the patch enlarged by ``scale`` in-plane (4 tiles at step 0.5)."""
    import torch

    patch = [int(p) for p in configuration_manager.patch_size]
    shape = [1] + patch if len(patch) == 2 else list(patch)
    shape = shape[:-2] + [int(round(s * scale)) for s in shape[-2:]]
    return torch.randn(n_channels, *shape, generator=torch.Generator().manual_seed(seed))


def make_predictor(trainer, device, mirroring: bool, compile_: bool):
    """nnU-Net's predictor around this trainer's inference network (deep supervision off, its weights)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    net = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                             trainer.num_input_channels if trainer.num_input_channels else
                                             len(trainer.dataset_json["channel_names"]),
                                             trainer.label_manager.num_segmentation_heads, False)
    if trainer.network is not None:
        if hasattr(trainer, "refresh_tag_embeddings"):
            trainer.refresh_tag_embeddings()
        net.load_state_dict(_unwrap(trainer.network).state_dict())
    net = net.to(device).eval()
    axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3] if mirroring else None
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=bool(mirroring and axes),
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(net, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__, axes)
    if compile_ and device.type != "cuda":
        from torch._dynamo import OptimizedModule

        if not isinstance(predictor.network, OptimizedModule):
            predictor.network = torch.compile(predictor.network)
    return predictor


# ---------------------------------------------------------------------------------------- timing
def _ratio(a, b):
    return float(a) / float(b) if a is not None and b not in (None, 0) else None


def summarise(runs: dict, base: str = PLAIN, other: str = MOSMOS) -> dict:
    """Medians, the main ratio (of medians) and the noise-robust ratios."""
    med = {n: statistics.median(r["wall"]) for n, r in runs.items()}
    out = {base: med[base], other: med[other], "ratio": _ratio(med[other], med[base])}
    out["ratio_paired"] = statistics.median(o / b for o, b in zip(runs[other]["wall"], runs[base]["wall"]))
    out["ratio_min"] = _ratio(min(runs[other]["wall"]), min(runs[base]["wall"]))
    out["ratio_cpu"] = _ratio(statistics.median(runs[other]["cpu"]), statistics.median(runs[base]["cpu"]))
    out["runs"] = {n: [round(x, 6) for x in r["wall"]] for n, r in runs.items()}
    return out


# ---------------------------------------------------------------------------------------- memory
def _trainer_resident(trainer) -> int:
    return resident_bytes(_unwrap(trainer.network), trainer.optimizer, getattr(trainer, "text_encoder", None))


def cuda_peak_train_mb(trainers: dict, step_fns: dict, device) -> dict:
    """Per variant: peak allocated during one train step above what was live before, plus its resident tensors."""
    out = {}
    for name, fn in step_fns.items():
        for t in trainers.values():
            t.optimizer.zero_grad(set_to_none=True)
        out[name] = (cuda_step_peak_bytes(fn, device) + _trainer_resident(trainers[name])) / 2 ** 20
    return out


def cuda_peak_inference_mb(predictors: dict, image, device) -> dict:
    import torch

    out = {}
    for name, pred in predictors.items():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        pred.predict_sliding_window_return_logits(image)
        torch.cuda.synchronize(device)
        out[name] = (torch.cuda.max_memory_allocated(device) - base + resident_bytes(pred.network)) / 2 ** 20
    return out


def memory_worker(spec: dict) -> dict:
    """Runs in a fresh process: peak memory of one variant (train step or inference) above a baseline.

    CPU: the peak RSS is reset to the current RSS after imports and input creation (Linux
    ``clear_refs``), so the number is the peak growth caused by building and running this variant
    (network, optimizer state, text encoder, activations); elsewhere the ``ru_maxrss`` growth.
    """
    import gc

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401  (import before baseline)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cls = trainer_class(spec["trainer"])
    plans, dj, configuration = spec["plans"], spec["dataset_json"], spec["configuration"]
    cm = PlansManager(deepcopy(plans)).get_configuration(configuration)
    n_in, n_labels = len(dj["channel_names"]), len(dj["labels"])
    with contextlib.redirect_stdout(sys.stderr):
        if spec["phase"] == "train":
            batch = synthetic_batch(cm, n_in, n_labels, seed=0, device=device)
        else:
            image = inference_image(cm, n_in, spec["image_scale"])
        preimport_text_stack()  # Python modules are not the variant's memory (its weights are)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        rss = PeakRSS().start()
        trainer = build_trainer(cls, plans, configuration, dj, device, initialize=spec["phase"] == "train")
        if spec["phase"] == "train":
            _maybe_compile_cpu(trainer, spec["compile"] and device.type != "cuda")
        else:
            predictor = make_predictor(trainer, device, spec["mirroring"], spec["compile"])
        # steady state: transient peaks of building/loading (e.g. reading the text encoder's file) do
        # not count; what stays resident (weights, optimizer state, text encoder) does
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            rss.settle()
        if spec["phase"] == "train":
            for _ in range(2):
                trainer.train_step(batch)
        else:
            with torch.no_grad():
                predictor.predict_sliding_window_return_logits(image)
        sync(device)
    if device.type == "cuda":
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20,
                "method": "cuda_max_memory_allocated"}
    return rss.growth_mb()


def isolated_memory(jobs: list[dict], workdir: Path, parallel: int = 2, repeats: int = 1) -> list[dict]:
    """:func:`memory_worker` for each spec in fresh subprocesses (see :func:`benchmarks.common.run_memory_workers`)."""
    return run_memory_workers("benchmarks.overhead", jobs, workdir, parallel, repeats)


# --------------------------------------------------------------------------------------- profile
def profile_train_step(trainer, batch: dict, steps: int = 2) -> dict:
    """Per-module milliseconds of one training step (forward, backward), with ``torch.profiler``.

    Forward ops count for the innermost labelled module they run in; each backward node counts for
    the module whose forward op created it (matched by autograd sequence number).
    """
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    net = _unwrap(trainer.network)
    labelled = {"encoder": net.encoder, "decoder": net.decoder, "seg_loss": trainer.loss}
    if hasattr(net, "tag_branch"):
        labelled.update({"text_encoder_pass": net.tag_branch.prompt, "tag_decoder": net.tag_branch.decoder,
                         "aligning_loss": trainer.aligning_loss})
    handles, stack = [], []

    def pre(name):
        def hook(*_):
            rf = record_function(f"bench::{name}")
            rf.__enter__()
            stack.append(rf)
        return hook

    def post(*_):
        stack.pop().__exit__(None, None, None)

    for name, mod in labelled.items():
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post))
    branch = getattr(net, "tag_branch", None)
    if branch is not None:
        orig_inject = branch.inject

        def inject(skips, attention):
            with record_function("bench::injection"):
                return orig_inject(skips, attention)
        branch.inject = inject
    orig_clip = torch.nn.utils.clip_grad_norm_

    def clip(*a, **k):
        with record_function("bench::clip_grad"):
            return orig_clip(*a, **k)
    torch.nn.utils.clip_grad_norm_ = clip
    device = trainer.device
    try:
        trainer.train_step(batch)  # warm
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(steps):
                trainer.train_step(batch)
            sync(device)
    finally:
        torch.nn.utils.clip_grad_norm_ = orig_clip
        for h in handles:
            h.remove()
        if branch is not None:
            del branch.inject  # the instance wrapper goes; the class method is back
    return _attribute(prof.events(), steps, device.type == "cuda")


def component_times(trainers: dict, batch: dict, repeats: int = 5) -> dict:
    """Milliseconds of each MOSMOS addition timed alone (forward + backward, real shapes), no profiler.

    The profiler's per-op overhead inflates the many small ops of the text encoder and the tag
    decoder; these direct timings are the numbers to compare with the measured step overhead.
    """
    import torch

    mos, plain = trainers[MOSMOS], trainers[PLAIN]
    net = _unwrap(mos.network)
    branch, stage = net.tag_branch, net.branch_config.stage
    device = mos.device
    data, target = batch["data"], batch["target"]
    seg_target = target[0] if isinstance(target, list) else target
    with torch.no_grad():
        skips = [s.detach() for s in net.encoder(data)]
        # a frozen prompt (lean, _frozenPrompt) released the text encoder: its cached embeddings are what it uses
        emb = mos._tag_embeddings().detach() if mos.train_prompt_context else branch.tag_embeddings
        tags = branch.decoder(skips[stage], emb)
    feat = skips[stage].clone().requires_grad_()
    att = tags.attention.detach().clone().requires_grad_()
    logits = tags.logits.detach().clone().requires_grad_()
    skip_leaves = [s.clone().requires_grad_() for s in skips]
    w_att = torch.rand_like(tags.attention)

    def text_pass():
        e = mos._tag_embeddings()
        e.backward(torch.ones_like(e))

    def tag_decoder():
        out = branch.decoder(feat, emb)
        (out.logits.sum() + (out.attention * w_att).sum()).backward()

    def injection():
        out = branch.inject(skip_leaves, att)
        sum(o.sum() for o in out[:stage + 1]).backward()

    def aligning_loss():
        mos.aligning_loss(att, logits, seg_target)["loss"].backward()

    def timed(fn):
        return median_ms(fn, device, repeats)

    out = {}
    if mos.train_prompt_context:
        out["text_encoder_pass"] = timed(text_pass)
    out["tag_decoder"] = timed(tag_decoder)
    out["injection"] = timed(injection)
    out["aligning_loss"] = timed(aligning_loss)
    for name, t in ((PLAIN, plain), (MOSMOS, mos)):  # grads are present after the timed train steps
        t.train_step(batch)
        out[f"optimizer_step_{name}"] = timed(t.optimizer.step)
        out[f"clip_grad_{name}"] = timed(lambda t=t: torch.nn.utils.clip_grad_norm_(t.network.parameters(), 12))
    out["optimizer_and_clip_extra"] = round(out[f"optimizer_step_{MOSMOS}"] + out[f"clip_grad_{MOSMOS}"]
                                            - out[f"optimizer_step_{PLAIN}"] - out[f"clip_grad_{PLAIN}"], 3)
    out["sum_of_additions"] = round(sum(out[k] for k in ("text_encoder_pass", "tag_decoder", "injection",
                                                         "aligning_loss", "optimizer_and_clip_extra") if k in out), 3)
    mos.optimizer.zero_grad(set_to_none=True)
    return out


def inference_component_times(predictors: dict, configuration_manager, n_channels: int, device,
                              repeats: int = 5) -> dict:
    """Milliseconds per sliding-window tile (batch 1, eval, no grad): whole networks and MOSMOS's parts."""
    import torch

    plain, mos = _unwrap(predictors[PLAIN].network), _unwrap(predictors[MOSMOS].network)
    x = torch.randn(1, n_channels, *[int(p) for p in configuration_manager.patch_size], device=device)
    branch, stage = mos.tag_branch, mos.branch_config.stage

    def timed(fn):
        return median_ms(fn, device, repeats)

    with torch.no_grad():
        skips = mos.encoder(x)
        att = branch.decoder(skips[stage], branch.tag_embeddings).attention
        injected = branch.inject(skips, att)
        out = {"plain_network": timed(lambda: plain(x)), "mosmos_network": timed(lambda: mos(x)),
               "encoder": timed(lambda: mos.encoder(x)),
               "tag_decoder": timed(lambda: branch.decoder(skips[stage], branch.tag_embeddings)),
               "injection": timed(lambda: branch.inject(skips, att)),
               "decoder": timed(lambda: mos.decoder(injected))}
    out["overhead"] = round(out["mosmos_network"] - out["plain_network"], 3)
    return out


def _label_of(evt) -> str | None:
    e = evt
    while e is not None:
        if e.name.startswith("bench::"):
            return e.name[len("bench::"):]
        if e.name.startswith("Optimizer."):
            return "optimizer"
        e = e.cpu_parent
    return None


def _attribute(events, steps: int, cuda: bool) -> dict:
    fwd_label = {}
    for e in events:
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd::engine"):
            anc, in_backward = e.cpu_parent, False
            while anc is not None:
                if anc.name.startswith("autograd::engine::evaluate_function"):
                    in_backward = True
                    break
                anc = anc.cpu_parent
            if not in_backward:
                label = _label_of(e)
                if label is not None:
                    fwd_label.setdefault(e.sequence_nr, label)
    table: dict = {}

    def add(label, part, host_us, dev_us):
        row = table.setdefault(label, {"fwd_ms": 0.0, "bwd_ms": 0.0})
        row[f"{part}_ms"] += host_us / 1000 / steps
        if cuda:
            row[f"{part}_device_ms"] = row.get(f"{part}_device_ms", 0.0) + dev_us / 1000 / steps

    for e in events:
        if e.device_type.name != "CPU":
            continue
        top_backward = e.name.startswith("autograd::engine::evaluate_function") and e.cpu_parent is None
        if top_backward:
            if "AccumulateGrad" in e.name:
                label = "grad_accumulation"
            else:
                label = fwd_label.get(e.sequence_nr, "unattributed_backward")
            add(label, "bwd", e.cpu_time_total, getattr(e, "device_time_total", 0.0) if cuda else 0.0)
            continue
        anc, inside_backward = e, False
        while anc is not None:
            if anc.name.startswith("autograd::engine::evaluate_function"):
                inside_backward = True
                break
            anc = anc.cpu_parent
        if inside_backward:
            continue
        label = _label_of(e) or "other"
        add(label, "fwd", e.self_cpu_time_total, getattr(e, "self_device_time_total", 0.0) if cuda else 0.0)
    for row in table.values():
        row["total_ms"] = row["fwd_ms"] + row["bwd_ms"]
        for k in list(row):
            row[k] = round(row[k], 3)
    total = sum(r["total_ms"] for r in table.values())
    return {"per_step_ms": round(total, 3),
            "modules": dict(sorted(table.items(), key=lambda kv: -kv[1]["total_ms"]))}


# ------------------------------------------------------------------------------------- the run
def _targets(result: dict) -> dict:
    out = {}
    for key, limit in TARGETS.items():
        r = result.get(key, {}).get("ratio")
        out[key] = {"limit": limit, "ratio": r, "met": None if r is None else bool(r <= limit)}
    return out


def variant_names(args) -> dict:
    """``{JSON name: trainer class}``: plain and MOSMOS, then ``--lean`` and ``--prototypes`` (each class once)."""
    names = {PLAIN: args.plain_trainer, MOSMOS: args.trainer}
    if args.lean:
        names[LEAN] = LEAN_TRAINER
    if args.prototypes:
        names.update((k, v) for k, v in PROTOTYPES.items() if k not in names)
    return names


def _versus_plain(runs: dict, name: str) -> dict:
    s = summarise({PLAIN: runs[PLAIN], name: runs[name]}, PLAIN, name)
    return {"median_s": s[name], "ratio": s["ratio"], "ratio_paired": s["ratio_paired"], "ratio_min": s["ratio_min"],
            "ratio_cpu": s["ratio_cpu"]}


def _memory_block(mem: dict, method: str) -> dict:
    return {PLAIN: mem[PLAIN], MOSMOS: mem[MOSMOS], "ratio": _ratio(mem[MOSMOS], mem[PLAIN]), "method": method}


def measure_memory(args, names: dict, trainers: dict, step_fns: dict, predictors: dict, image, plans: dict,
                   dataset_json: dict, configuration: str, device, workdir: Path) -> dict:
    """``{"train": {variant: MB}, "inference": {...}, "method": {...}, ...}`` for every variant, or None
    values when memory is not measured (CPU with ``--no-isolate-memory``)."""
    import torch

    phases = ["train"] + ([] if image is None else ["inference"])
    if args.isolate_memory:
        spec = {"plans": plans, "dataset_json": dataset_json, "configuration": configuration, "device": str(device),
                "compile": args.compile, "mirroring": args.mirroring, "image_scale": args.image_scale,
                "threads": args.threads}
        jobs = [dict(spec, trainer=names[n], phase=ph) for ph in phases for n in names]
        t0 = time.time()
        res = isolated_memory(jobs, workdir, parallel=args.memory_parallel, repeats=args.memory_repeats)
        print(f"[bench] {configuration}: isolated memory in {time.time() - t0:.0f} s", file=sys.stderr)
        by = {(ph, n): r for (ph, n), r in zip([(ph, n) for ph in phases for n in names], res)}
        how = ("cuda max_memory_allocated" if device.type == "cuda" else
               "peak RSS while running over the RSS after imports and inputs, i.e. everything the variant adds "
               "(Linux: VmHWM reset through /proc/self/clear_refs after building, MALLOC_MMAP_THRESHOLD_=131072)")
        out = {"method": {ph: f"fresh subprocess per variant: {how}, "
                              f"{'2 train steps' if ph == 'train' else 'one prediction'}"
                              + (f", median of {args.memory_repeats} processes" if args.memory_repeats > 1 else "")
                          for ph in phases}}
        for ph in phases:
            out[ph] = {n: by[(ph, n)]["peak_mb"] for n in names}
            if args.memory_repeats > 1:
                out[f"{ph}_runs"] = {n: by[(ph, n)]["runs_mb"] for n in names}
            if device.type != "cuda":
                out[f"{ph}_baseline_rss"] = {n: by[(ph, n)].get("baseline_rss_mb") for n in names}
                out[f"{ph}_resident"] = {n: by[(ph, n)].get("resident_mb") for n in names}
        return out
    if device.type == "cuda":
        out = {"train": cuda_peak_train_mb(trainers, step_fns, device),
               "method": {"train": "cuda max_memory_allocated during one train step above the live baseline + the "
                                   "variant's resident tensors (weights, optimizer state, text encoder)"}}
        if image is not None:
            with torch.no_grad():
                out["inference"] = cuda_peak_inference_mb(predictors, image, device)
            out["method"]["inference"] = "cuda max_memory_allocated during prediction + weights"
        return out
    return {ph: {n: None for n in names} for ph in phases} | {
        "method": {ph: "not measured on CPU with --no-isolate-memory" for ph in phases}}


def bench_configuration(args, plans: dict, dataset_json: dict, configuration: str, device, workdir: Path) -> dict:
    import torch

    names = variant_names(args)
    extras = [n for n in names if n not in (PLAIN, MOSMOS)]
    trainers = {}
    for name, cls_name in names.items():
        trainers[name] = build_trainer(trainer_class(cls_name), plans, configuration, dataset_json, device)
        _maybe_compile_cpu(trainers[name], args.compile and device.type != "cuda")
    mos = trainers[MOSMOS]
    batch = trainer_batch(mos, seed=args.seed, device=device)
    cm = mos.configuration_manager
    arch = cm.network_arch_init_kwargs
    info = {"patch_size": list(map(int, cm.patch_size)), "batch_size": int(cm.batch_size),
            "n_stages": int(arch["n_stages"]), "features_per_stage": list(map(int, arch["features_per_stage"])),
            "network_class": cm.network_arch_class_name.rsplit(".", 1)[-1],
            "num_tags": len(mos.class_prompts), "tag_branch": _unwrap(mos.network).branch_config.to_dict(),
            "text_encoder": mos.text_encoder_name,
            "params_m": {n: round(sum(p.numel() for p in _unwrap(t.network).parameters()) / 1e6, 3)
                         for n, t in trainers.items()},
            "text_encoder_params_m": None if mos.text_encoder is None else  # released by a frozen-prompt trainer
            round(sum(p.numel() for p in mos.text_encoder.parameters()) / 1e6, 3)}
    result: dict = {"plans": info}

    step_fns = {n: (lambda t=t: t.train_step(batch)) for n, t in trainers.items()}
    t0 = time.time()
    runs = interleaved(step_fns, device, args.warmup, args.repeats, args.steps)
    result["train_step_s"] = summarise({n: runs[n] for n in (PLAIN, MOSMOS)})
    result["train_step_s"]["steps_per_repeat"] = args.steps
    entries = {}
    for name in extras:
        v = _versus_plain(runs, name)
        entries[name] = {"class": names[name], "train_step_s": v["median_s"], "ratio_vs_plain": v["ratio"],
                         "ratio_paired": v["ratio_paired"], "ratio_min": v["ratio_min"], "ratio_cpu": v["ratio_cpu"],
                         "gain_vs_mosmos": _ratio(result["train_step_s"][MOSMOS], v["median_s"]),
                         "params_m": info["params_m"][name]}
    print(f"[bench] {configuration}: train steps timed in {time.time() - t0:.0f} s", file=sys.stderr)

    image, predictors = None, {}
    if not args.no_inference:
        image = inference_image(cm, mos.num_input_channels, args.image_scale)
        predictors = {n: make_predictor(trainers[n], device, args.mirroring, args.compile) for n in names}
        n_tiles = len(predictors[PLAIN]._internal_get_sliding_window_slicers(image.shape[1:]))
        image = image.to(device) if device.type == "cuda" else image
        result["plans"].update(inference_image_shape=list(image.shape), inference_tiles=n_tiles,
                               mirroring=bool(predictors[PLAIN].use_mirroring))
        t0 = time.time()
        with torch.no_grad():
            inf_runs = interleaved({n: (lambda p=p: p.predict_sliding_window_return_logits(image))
                                    for n, p in predictors.items()},
                                   device, max(1, args.warmup), args.repeats, 1)
        result["inference_s"] = summarise({n: inf_runs[n] for n in (PLAIN, MOSMOS)})
        for name in extras:
            v = _versus_plain(inf_runs, name)
            entries[name].update(inference_s=v["median_s"], inference_ratio_vs_plain=v["ratio"])
        print(f"[bench] {configuration}: inference timed in {time.time() - t0:.0f} s", file=sys.stderr)

    mem = measure_memory(args, names, trainers, step_fns, predictors, image, plans, dataset_json, configuration,
                         device, workdir)
    for phase, key in (("train", "peak_mem_mb"), ("inference", "inference_peak_mem_mb")):
        if phase not in mem:
            continue
        result[key] = _memory_block(mem[phase], mem["method"][phase])
        if f"{phase}_runs" in mem:
            result[key]["runs_mb"] = {n: mem[f"{phase}_runs"][n] for n in (PLAIN, MOSMOS)}
        if f"{phase}_baseline_rss" in mem:
            result[key]["baseline_rss_mb"] = {n: mem[f"{phase}_baseline_rss"][n] for n in (PLAIN, MOSMOS)}
        if f"{phase}_resident" in mem:  # every variant: the peak split into resident after building + running
            result[key]["resident_mb"] = dict(mem[f"{phase}_resident"])
        for name in extras:
            entries[name][key] = mem[phase][name]
            entries[name][f"{key.replace('_mb', '')}_ratio_vs_plain"] = _ratio(mem[phase][name], mem[phase][PLAIN])
    result["peak_mem_mb"]["text_encoder_mb"] = round(resident_bytes(mos.text_encoder) / 2 ** 20, 1)
    result["targets"] = _targets(result)
    for entry in entries.values():
        entry["targets"] = _targets({"train_step_s": {"ratio": entry["ratio_vs_plain"]},
                                     "inference_s": {"ratio": entry.get("inference_ratio_vs_plain")},
                                     "peak_mem_mb": {"ratio": entry.get("peak_mem_ratio_vs_plain")}})
    if args.lean:
        result[LEAN] = entries[LEAN] if LEAN in entries else None
    if args.prototypes:
        result["prototypes"] = {n: entries[n] for n in PROTOTYPES if n in entries}
    if args.profile:
        t0 = time.time()
        result["profile"] = {
            "components_ms": component_times(trainers, batch, max(3, args.repeats)),
            "inference_tile_ms": None if image is None else inference_component_times(
                predictors, cm, mos.num_input_channels, device, max(3, args.repeats)),
            "measured_overhead_ms": round((result["train_step_s"][MOSMOS] - result["train_step_s"][PLAIN]) * 1000, 3),
            "torch_profiler": {n: profile_train_step(trainers[n], batch, args.profile_steps) for n in (PLAIN, MOSMOS)},
        }
        print(f"[bench] {configuration}: profiled in {time.time() - t0:.0f} s", file=sys.stderr)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_overhead.py",
        description="Time plain nnU-Net vs MOSMOS (network + loss, identical plans): training step, sliding-window "
                    "inference, peak memory. Prints JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("what to benchmark (default: synthetic phantoms planned by nnU-Net; "
                               "with --quick: built-in plans-like 2d + 3d_fullres)")
    src.add_argument("--plans", help="nnUNetPlans.json of an existing preprocessed dataset (or a model folder)")
    src.add_argument("--dataset-json", help="its dataset.json (default: next to --plans)")
    src.add_argument("-c", "--configurations", nargs="+", help="configurations (default: 2d 3d_fullres, those present)")
    src.add_argument("--patch", nargs="+", type=int, help="built-in plans-like configuration with this patch size")
    src.add_argument("--real-size", action="store_true",
                     help="built-in plans-like configurations of nnU-Net's typical size: 2d 512x512 batch 12 "
                          "(8 stages) and 3d_fullres 128x128x128 batch 2 (6 stages)")
    src.add_argument("--batch-size", type=int,
                     help="with --patch (default 2) or --real-size (default: per configuration)")
    src.add_argument("--base-features", type=int, default=32, help="with --patch")
    src.add_argument("--max-features", type=int, help="with --patch (default 512 for 2D, 320 for 3D)")
    src.add_argument("--num-classes", type=int, default=7, help="with --patch: foreground classes (= tags)")
    src.add_argument("--synthetic-shape", nargs=3, type=int, default=[32, 64, 64], metavar=("Z", "Y", "X"))
    src.add_argument("--synthetic-cases", type=int, default=4)
    run = p.add_argument_group("how")
    run.add_argument("--quick", action="store_true",
                     help="tiny plans-like patches, 2 repeats, no mirroring (memory stays measured)")
    run.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    run.add_argument("--compile", action="store_true", help="torch.compile both networks (nnU-Net's path on CUDA)")
    run.add_argument("--repeats", type=int, help="timed rounds per variant, median reported (default 5; quick 2)")
    run.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    run.add_argument("--steps", type=int, default=1, help="train steps per timed round")
    run.add_argument("--text-encoder", help="HF id or folder (default: $MOSMOS_TEXT_ENCODER, else all-MiniLM-L6-v2)")
    run.add_argument("--pretrained", help="a MOSMOS pre-training checkpoint: shape the branch like it (and load it)")
    run.add_argument("--trainer", default="nnUNetTrainerMOSMOS", help="the MOSMOS trainer class")
    run.add_argument("--plain-trainer", default="nnUNetTrainer", help="the baseline trainer class")
    mirror = run.add_mutually_exclusive_group()
    mirror.add_argument("--mirroring", dest="mirroring", action="store_true", default=None,
                        help="test-time mirroring as nnU-Net (default outside --quick)")
    mirror.add_argument("--no-mirroring", dest="mirroring", action="store_false")
    run.add_argument("--image-scale", type=float, default=1.5, help="inference image = patch x this, in-plane")
    run.add_argument("--no-inference", action="store_true")
    add_memory_options(run, "each variant and phase")
    run.add_argument("--memory-parallel", type=int, default=2, help="memory subprocesses at a time")
    run.add_argument("--profile", action="store_true", help="per-module breakdown of a train step (torch.profiler)")
    run.add_argument("--profile-steps", type=int, default=2)
    run.add_argument("--lean", action="store_true",
                     help=f"also time the lean branch ({LEAN_TRAINER}, what nnUNetTrainerMOSMOS is since the "
                          "CHAOS study) against plain in the same interleaved run; with --trainer "
                          "nnUNetTrainerMOSMOS_full, full and lean side by side")
    run.add_argument("--prototypes", action="store_true", help="also time design alternatives (see docs/benchmarks.md)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int,
                     help="torch.set_num_threads; default on CPU: 1 (OpenMP threads of a shared machine wait for "
                          "each other at every barrier, which makes multi-threaded timings swing 2-10x), 0 = "
                          "torch's default")
    run.add_argument("-o", "--output", help="also write the JSON here")
    run.add_argument("--keep-workspace", action="store_true", help="do not delete the temporary nnU-Net folders")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if sum(map(bool, (args.plans, args.patch, args.real_size))) > 1:
        p.error("--plans, --patch and --real-size are exclusive")
    resolve_memory_options(p, args)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.mirroring is None:
        args.mirroring = not args.quick
    return args


def run_benchmark(args: argparse.Namespace) -> dict:
    import torch

    device = torch.device(args.device)
    if args.threads is None and device.type == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_overhead: --device cuda but CUDA is not available")
    started = time.time()
    result = {"benchmark": "bench_overhead", "format_version": 1,
              "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(["scripts/bench_overhead.py"] + list(getattr(args, "argv", None) or [])),
              "machine": machine(device), "versions": versions()}
    tmp = tempfile.mkdtemp(prefix="mosmos_bench_")
    root = Path(tmp)
    try:
        with workspace_env(root, args.text_encoder, args.compile, args.pretrained), \
                contextlib.redirect_stdout(sys.stderr):
            if args.plans:
                plans, dj = read_plans(args.plans, args.dataset_json)
                source = f"plans file {args.plans}"
            elif args.real_size:
                plans, dj = plans_like({c: plans_like_configuration(
                    r["patch"], args.batch_size or r["batch_size"], args.base_features, args.max_features,
                    max_stages=r.get("max_stages")) for c, r in REAL_SIZE.items()})
                source = ("built-in real-size plans-like configurations (2d 512x512 batch 12, 3d_fullres 128x128x128 "
                          "batch 2; benchmarks.common.plans_like_configuration)")
            elif args.patch or args.quick:
                patches = {("2d" if len(args.patch) == 2 else "3d_fullres"): args.patch} if args.patch \
                    else QUICK_PATCHES
                labels = DEFAULT_LABELS if not args.patch or args.num_classes == 7 else \
                    {"background": 0, **{f"organ_{i + 1}": i + 1 for i in range(args.num_classes)}}
                plans, dj = plans_like({c: plans_like_configuration(pt, args.batch_size or 2, args.base_features,
                                                                    args.max_features)
                                        for c, pt in patches.items()}, labels)
                source = "built-in plans-like configuration (benchmarks.common.plans_like_configuration)"
            else:
                t0 = time.time()
                plans, dj = synthetic_plans(root, args.synthetic_shape, args.synthetic_cases)
                source = (f"synthetic phantoms {args.synthetic_shape} x {args.synthetic_cases} cases planned by "
                          f"nnU-Net's ExperimentPlanner ({time.time() - t0:.0f} s)")
            configs = args.configurations or [c for c in ("2d", "3d_fullres") if c in plans["configurations"]]
            text_encoder = None
            try:
                from nnunet_mosmos.text import resolve_text_encoder

                text_encoder = resolve_text_encoder(None)
            except Exception:  # reported by the trainer itself
                pass
            result["settings"] = {
                "source": source, "configurations": configs, "device": str(device), "compile": args.compile,
                "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup, "steps_per_repeat": args.steps,
                "plain_trainer": args.plain_trainer, "mosmos_trainer": args.trainer, "text_encoder": text_encoder,
                "mirroring": args.mirroring, "tile_step_size": 0.5, "isolate_memory": args.isolate_memory,
                "memory_repeats": args.memory_repeats if args.isolate_memory else None, "real_size": args.real_size,
                "lean": args.lean, "variants": variant_names(args),
                "torch_threads": torch.get_num_threads(),
                "timing": "wall-clock seconds, interleaved rounds (order alternates), median over repeats"}
            result["configurations"] = {}
            for c in configs:
                if c not in plans["configurations"]:
                    raise SystemExit(f"bench_overhead: configuration {c} not in the plans "
                                     f"({sorted(plans['configurations'])})")
                result["configurations"][c] = bench_configuration(args, plans, dj, c, device, root)
    finally:
        if not args.keep_workspace:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"[bench] workspace kept: {root}", file=sys.stderr)
    result["elapsed_s"] = round(time.time() - started, 1)
    try:
        result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return result


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    if args.memory_worker:
        spec = json.loads(Path(args.memory_worker).read_text())
        print(json.dumps(memory_worker(spec), default=json_default))
        return 0
    emit_json(run_benchmark(args), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
