"""Helpers the benchmarks share: timing, machine/version records, JSON output, nnU-Net plans and
trainers without a dataset on disk.

* timing: :func:`interleaved` (rounds that alternate the order of the variants), :func:`median_ms`,
  :func:`sync` (device synchronisation before reading a clock);
* records: :func:`machine`, :func:`versions`; output: :func:`emit_json`;
* plans: :func:`plans_like_configuration` / :func:`plans_like` (an nnU-Net-2.8-style plan without
  the planner), :func:`synthetic_plans` (phantoms planned by nnU-Net), :func:`read_plans`;
* :func:`workspace_env` (nnU-Net's folders in a temporary root) and :func:`build_trainer` (a
  trainer as ``nnUNetv2_train`` builds it);
* peak memory: :func:`resident_bytes`, :class:`PeakRSS` (peak RSS growth in a worker process) and
  :func:`run_memory_workers` (one fresh process per variant, so variants never count each other).

Part of the uninstalled harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from copy import deepcopy
from pathlib import Path

import numpy as np

DATASET_ID = 950
DATASET_NAME = f"Dataset{DATASET_ID:03d}_MOSMOSBench"
#: the labels of the synthetic phantoms: 7 organs -> 7 tag queries
DEFAULT_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4,
                  "stomach": 5, "aorta": 6, "gallbladder": 7}
ENV_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_compile", "MOSMOS_PRETRAINED",
            "MOSMOS_TEXT_ENCODER")


# ---------------------------------------------------------------------------------------- plans
def plans_like_configuration(patch, batch_size: int = 2, base_features: int = 32, max_features: int | None = None,
                             n_conv: int = 2, min_feature_map: int = 4, max_stages: int | None = None,
                             strides: list | None = None, n_conv_decoder: int | None = None,
                             residual: bool = False) -> dict:
    """An nnU-Net-2.8-style configuration for ``patch`` (PlainConvUNet), without running the planner:
    the one generator of plans for tests and benchmarks (``tests/plans_fixtures.py`` wraps it).

    Topology like nnU-Net's: an axis is pooled while its feature map stays >= ``min_feature_map``
    after pooling; features double per stage up to 512 (2D) / 320 (3D). ``strides`` (one per stage)
    fixes the topology instead; ``n_conv_decoder`` convs per decoder stage (default ``n_conv``);
    ``residual``: ResidualEncoderUNet with one block per stage.
    """
    patch = [int(p) for p in patch]
    dim = len(patch)
    if dim not in (2, 3):
        raise ValueError(f"--patch needs 2 or 3 sizes, got {patch}")
    max_features = max_features or (512 if dim == 2 else 320)
    max_stages = max_stages or (7 if dim == 2 else 6)
    if strides is None:
        strides, size = [[1] * dim], list(patch)
        while len(strides) < max_stages:
            s = [2 if sz // 2 >= min_feature_map and sz % 2 == 0 else 1 for sz in size]
            if max(s) == 1:
                break
            strides.append(s)
            size = [sz // st for sz, st in zip(size, s)]
    strides = [list(map(int, s)) for s in strides]
    n = len(strides)
    n_conv_decoder = n_conv if n_conv_decoder is None else n_conv_decoder
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    blocks = {"n_blocks_per_stage": [1] * n} if residual else {"n_conv_per_stage": [n_conv] * n}
    return {
        "data_identifier": f"nnUNetPlans_{'2d' if dim == 2 else '3d_fullres'}",
        "preprocessor_name": "DefaultPreprocessor", "batch_size": int(batch_size), "patch_size": patch,
        "median_image_size_in_voxels": [float(p) for p in patch], "spacing": [1.0] * dim,
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet."
                                  + ("ResidualEncoderUNet" if residual else "PlainConvUNet"),
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": [min(base_features * 2 ** i, max_features) for i in range(n)],
                "conv_op": conv, "kernel_sizes": [[3] * dim] * n, "strides": strides,
                **blocks, "n_conv_per_stage_decoder": [n_conv_decoder] * (n - 1), "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": dim == 2,
    }


def plans_like(configurations: dict, labels: dict | None = None) -> tuple[dict, dict]:
    """``(plans, dataset_json)`` holding the given ``{name: configuration}`` (see :func:`plans_like_configuration`)."""
    dims = {len(c["patch_size"]) for c in configurations.values()}
    plans = {
        "dataset_name": DATASET_NAME, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": configurations,
        "experiment_planner_used": "plans_like (benchmarks.common)", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 250.0, "mean": 100.0, "median": 100.0, "min": -1000.0, "percentile_00_5": -950.0,
            "percentile_99_5": 220.0, "std": 100.0}},
    }
    assert dims <= {2, 3}
    labels = labels or DEFAULT_LABELS
    dataset_json = {"name": "MOSMOSBench", "channel_names": {"0": "CT"}, "labels": dict(labels),
                    "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset_json


def synthetic_plans(workspace: Path, shape=(32, 64, 64), num_train: int = 4, seed: int = 0) -> tuple[dict, dict]:
    """Write the synthetic phantoms into the workspace and plan them with nnU-Net's own planner."""
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    from nnunet_mosmos.synthetic import write_dataset

    write_dataset(workspace / "raw", dataset_id=DATASET_ID, name="MOSMOSBench", num_train=num_train, num_test=0,
                  seed=seed, shape=tuple(int(s) for s in shape))
    threads = torch.get_num_threads()
    try:
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=False, verbose=False,
                             show_progress_bar=False)
        plan_experiments([DATASET_ID])
    finally:
        torch.set_num_threads(threads)  # the planner's VRAM estimate changes it
    pre = workspace / "pre" / DATASET_NAME
    return json.loads((pre / "nnUNetPlans.json").read_text()), json.loads((pre / "dataset.json").read_text())


def read_plans(plans_path: str, dataset_json_path: str | None = None) -> tuple[dict, dict]:
    """Plans of an existing (preprocessed or model) folder; dataset.json defaults to the one beside it."""
    plans_path = Path(plans_path)
    dj = Path(dataset_json_path) if dataset_json_path else plans_path.parent / "dataset.json"
    if not dj.is_file():
        raise SystemExit(f"bench_overhead: no dataset.json next to {plans_path}; pass --dataset-json")
    plans = json.loads(plans_path.read_text())
    for block in plans["configurations"].values():  # a model folder's plans: start from plain nnU-Net's
        block.pop("mosmos_tag_branch", None)
    return plans, json.loads(dj.read_text())


# ------------------------------------------------------------------------------------ workspace
@contextlib.contextmanager
def workspace_env(root: Path, text_encoder: str | None, compile_: bool, pretrained: str | None):
    """nnU-Net folders inside ``root``; our variables set for the duration; everything restored after."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                      nnUNet_results=str(root / "results"), nnUNet_compile="1" if compile_ else "0")
    os.environ.pop("MOSMOS_PRETRAINED", None)
    if pretrained:
        os.environ["MOSMOS_PRETRAINED"] = str(Path(pretrained).resolve())
    if text_encoder:
        os.environ["MOSMOS_TEXT_ENCODER"] = text_encoder
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare_dummy_data_folder(plans: dict, configuration: str) -> None:
    """``initialize`` infers the dataset class from the preprocessed folder's file endings; give it one."""
    from nnunetv2.paths import nnUNet_preprocessed

    folder = Path(str(nnUNet_preprocessed)) / plans["dataset_name"] / plans["configurations"][configuration].get(
        "data_identifier", f"nnUNetPlans_{configuration}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.b2nd").touch()


def build_trainer(cls, plans: dict, configuration: str, dataset_json: dict, device, initialize: bool = True):
    """A trainer as ``nnUNetv2_train`` builds it (inside the workspace), optionally initialised."""
    _prepare_dummy_data_folder(plans, configuration)
    p = deepcopy(plans)
    p["continue_training"] = False  # nnunetv2 2.8 pops this key in __init__
    trainer = cls(p, configuration, 0, deepcopy(dataset_json), device)
    if initialize:
        trainer.initialize()
        trainer.network.train()
    return trainer


# ---------------------------------------------------------------------------------------- timing
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, device, warmup: int, repeats: int, steps: int) -> dict:
    """``{name: {"wall": [...], "cpu": [...]}}`` seconds per call; rounds alternate the order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    runs = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fns[name]()
            sync(device)
            runs[name]["wall"].append((time.perf_counter() - w0) / steps)
            runs[name]["cpu"].append((time.process_time() - c0) / steps)
    return runs


def median_ms(fn, device, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds after one warm-up call (device-synchronised)."""
    fn()
    sync(device)
    vals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        vals.append(time.perf_counter() - t0)
    return round(statistics.median(vals) * 1000, 3)


# ------------------------------------------------------------------------------------ records
def versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("nnunetv2", "dynamic-network-architectures", "transformers", "nnunet-mosmos"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def machine(device) -> dict:
    import torch

    out = {"platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    try:
        out["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        out["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------- output
def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def emit_json(result: dict, path=None) -> None:
    """The benchmark result as JSON on stdout (the scripts' contract) and, when asked, in ``path``."""
    text = json.dumps(result, indent=2, default=json_default)
    if path:
        Path(path).write_text(text + "\n")
    print(text)


# ------------------------------------------------------------------------ peak memory (CPU, CUDA)
#: the checkout holding ``benchmarks/`` (not installed): memory workers find it through PYTHONPATH
REPO_ROOT = str(Path(__file__).resolve().parents[1])


def resident_bytes(*modules_or_optimizers) -> int:
    """Bytes of the distinct tensors held by modules (params, buffers) and optimizers (state)."""
    import torch

    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()

    for obj in modules_or_optimizers:
        if obj is None:
            continue
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                add(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for t in state.values():
                    add(t)
    return total


def cuda_step_peak_bytes(step, device) -> int:
    """Bytes allocated at the peak of ``step()`` above what was live before it (CUDA), the caches emptied
    first: the transient memory of one step. Callers drop gradients before and add resident tensors."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def proc_status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MB; None where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux: reset the process's peak RSS (VmHWM) to the current RSS (``/proc/self/clear_refs``, value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_mb() -> float:
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10


class PeakRSS:
    """Peak RSS growth of what runs after :meth:`start` over the RSS at :meth:`start`.

    ``start()`` before building the variant, ``settle()`` after building it (transient peaks of
    building and loading files do not count; what stays resident does), then run it and read
    :meth:`growth_mb`. On Linux the peak is reset through ``clear_refs``; elsewhere it is the
    ``ru_maxrss`` growth (an upper bound that includes building).
    """

    def start(self) -> "PeakRSS":
        self.exact = reset_peak_rss()
        self.base = proc_status_mb("VmRSS") if self.exact else maxrss_mb()
        return self

    def settle(self) -> None:
        """After building: what stays resident from here on is ``resident_mb`` (weights, optimizer
        state, text encoder); the rest of the later peak is what running adds (activations)."""
        self.resident = proc_status_mb("VmRSS") - self.base if self.exact else None
        if self.exact:
            reset_peak_rss()

    def growth_mb(self) -> dict:
        peak = proc_status_mb("VmHWM") if self.exact else maxrss_mb()
        return {"peak_mb": peak - self.base, "baseline_rss_mb": self.base,
                "resident_mb": getattr(self, "resident", None),
                "method": "VmHWM growth after clear_refs" if self.exact else "ru_maxrss growth"}


def run_memory_workers(module: str, jobs: list[dict], workdir: Path, parallel: int = 2, repeats: int = 1) -> list[dict]:
    """``python -m <module> --memory-worker <spec.json>`` in a fresh process per job (a few at a time),
    ``repeats`` processes per job; the worker prints one JSON line with ``peak_mb`` last. Each result's
    ``peak_mb`` (and ``baseline_rss_mb``) is the median of its processes, ``runs_mb`` all of them.

    glibc's mmap threshold is fixed (``MALLOC_MMAP_THRESHOLD_=131072``): large tensors are mapped and
    unmapped, so the RSS follows the live memory instead of glibc's history-dependent heap
    (otherwise +-40 MB between runs).
    """
    import subprocess
    import sys

    workdir = Path(workdir)
    procs, raw = [], [None] * (len(jobs) * repeats)
    pending = [(k, jobs[k // repeats]) for k in range(len(raw))]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072"))
    env["PYTHONPATH"] = os.pathsep.join(part for part in (env.get("PYTHONPATH"), REPO_ROOT) if part)
    while pending or procs:
        while pending and len(procs) < parallel:
            i, spec = pending.pop(0)
            path = workdir / f"memory_job_{module.rsplit('.', 1)[-1]}_{i}.json"
            path.write_text(json.dumps(spec, default=json_default))
            p = subprocess.Popen([sys.executable, "-m", module, "--memory-worker", str(path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            procs.append((i, p))
        i, p = procs.pop(0)
        out, err = p.communicate()
        if p.returncode != 0:
            what = {k: v for k, v in jobs[i // repeats].items() if isinstance(v, (str, int, float)) and k != "plans"}
            raise RuntimeError(f"memory worker {module} {what} failed:\n{err[-3000:]}")
        raw[i] = json.loads(out.strip().splitlines()[-1])
    results = []
    for k in range(len(jobs)):
        runs = raw[k * repeats:(k + 1) * repeats]
        merged = dict(runs[0], peak_mb=statistics.median(r["peak_mb"] for r in runs),
                      runs_mb=[round(r["peak_mb"], 3) for r in runs])
        for key in ("baseline_rss_mb", "resident_mb"):
            if runs[0].get(key) is not None:
                merged[key] = statistics.median(r[key] for r in runs)
        results.append(merged)
    return results


def preimport_text_stack() -> None:
    """Import (not load) the text encoder's code, the same in every variant's memory worker: Python
    modules are not a variant's memory, its weights are."""
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from nnunet_mosmos.text import resolve_text_encoder

        name = resolve_text_encoder(None)
        local = Path(name).expanduser()
        cfg = AutoConfig.from_pretrained(str(local) if local.exists() else name, local_files_only=local.exists())
        AutoModel._model_mapping[type(cfg)]  # imports the modeling module
        AutoTokenizer.from_pretrained(str(local) if local.exists() else name, local_files_only=local.exists())
    except Exception:  # noqa: BLE001 - only a warm-up; the trainer reports real problems
        pass


def add_memory_options(group, what: str = "each variant") -> None:
    """The memory options of the overhead and pre-training benchmarks: ``--isolate-memory`` /
    ``--no-isolate-memory`` and ``--memory-repeats``; ``resolve_memory_options`` applies the defaults."""
    isolate = group.add_mutually_exclusive_group()
    isolate.add_argument("--isolate-memory", dest="isolate_memory", action="store_true", default=None,
                         help=f"peak memory of {what} in fresh subprocesses (the default on CPU, where it is the "
                              "only way to a number; on CUDA memory is measured in-process unless this is given)")
    isolate.add_argument("--no-isolate-memory", dest="isolate_memory", action="store_false",
                         help="skip the memory subprocesses (on CPU memory is then reported as null)")
    group.add_argument("--memory-repeats", type=int, default=1,
                       help="fresh processes per variant for the isolated memory (median reported; repeated runs "
                            "agreed within 1 MB)")


def resolve_memory_options(parser, args) -> None:
    """Check ``--memory-repeats`` and default ``--isolate-memory`` to on for CPU runs (see add_memory_options)."""
    if args.memory_repeats < 1:
        parser.error("--memory-repeats must be >= 1")
    if args.isolate_memory is None:
        args.isolate_memory = args.device == "cpu"
