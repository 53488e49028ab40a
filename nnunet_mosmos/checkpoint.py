"""The one-file contract between pre-training and fine-tuning: write, read, check, describe.

Why a format of our own instead of a raw ``state_dict``: fine-tuning must know *what* it is loading
(which encoder topology, which stage the tag decoder reads, which text encoder and tags the prompt
context was learned with, how images were normalised) and say precisely what is wrong when a file
does not fit. Everything is plain tensors / lists / dicts / str / numbers, so the file loads with
``torch.load(..., weights_only=True, map_location="cpu")``: no pickled classes, no GPU needed, no
code execution when opening a file someone sent you.

Payload (version 2)::

    format: "nnunet-mosmos-checkpoint"   version: 2
    encoder:      {arch_class_name, arch_kwargs (plans style, op names as strings),
                   arch_kwargs_req_import, input_channels, dim (2, or 3 for a natively 3D
                   pre-training), state_dict}                             # keys of ``net.encoder``
    encoder_3d:   same structure, inflated for a 3D configuration pre-trained as its 2D twin (optional)
    tag_decoder:  {config (TagDecoder kwargs), stage, state_dict}
    prompt_context: tensor n_ctx x text_dim
    text_encoder: {name_or_path, dim, trained: False}
    vocabulary:   [tag names, in query order]
    preprocessing: 2D {channels, dim: 2, normalization: "zscore-per-image", use_mask_for_norm, image_size}
                   3D {channels, dim: 3, image_size (patch), spacing, normalization (nnU-Net scheme),
                       use_mask_for_norm, intensity_properties}
    provenance:   {data, pairs: {train, val, skipped, unreadable, constant}, steps, epochs, history,
                   val_history, loss_weights, objectives, optimizer, seed, code_version, command, date,
                   nnunet: {dataset, plans, configuration, input_channels} or None}
    projections:  {image: state_dict, text: state_dict, temperature, embed_dim} (optional, for zero-shot use)

Versions: 1 had no ``preprocessing.dim`` / ``use_mask_for_norm`` (2D, z-score over the whole image)
and no natively 3D encoder; 2 added them, so that fine-tuning and zero-shot normalise as the
pre-training did. Version-1 files are still read (the missing entries mean what version 1 did); a
reader older than the file refuses it instead of guessing.
"""
from __future__ import annotations

import os
import pickle
import re
import stat
import tempfile
from pathlib import Path

import torch
from torch import nn

FORMAT = "nnunet-mosmos-checkpoint"
VERSION = 2  # see the module docstring for what each version holds
_HOW_TO_MAKE = ("Make one with `mosmos-pretrain ... -o FILE.pt` (see docs/pretraining.md); "
                "inspect a file with `mosmos-inspect FILE.pt`.")


#: where fine-tuning looks for a checkpoint: ``$MOSMOS_PRETRAINED`` first, then the conventional file
#: ``$nnUNet_preprocessed/DatasetXXX/mosmos_pretrained/<plans>__<configuration>.pt`` that
#: ``mosmos-pretrain -d/-c`` writes by default
ENV_PRETRAINED = "MOSMOS_PRETRAINED"
PRETRAINED_SUBFOLDER = "mosmos_pretrained"


class CheckpointError(ValueError):
    """A file is not a (valid, fitting) MOSMOS checkpoint; the message names the file and the fix."""


def conventional_path(preprocessed_dataset_folder: str | os.PathLike, plans: str, configuration: str) -> Path:
    """The checkpoint file ``mosmos-pretrain -d -c`` writes by default, and where the trainers look."""
    return Path(preprocessed_dataset_folder) / PRETRAINED_SUBFOLDER / f"{plans}__{configuration}.pt"


def locate_checkpoint(preprocessed_dataset_folder: str | None, plans: str, configuration: str,
                      environ=os.environ) -> str | None:
    """``$MOSMOS_PRETRAINED`` (which must exist) > the conventional file (if present) > None."""
    explicit = environ.get(ENV_PRETRAINED)
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"{ENV_PRETRAINED}={explicit} does not exist. Point it at a file "
                                    "written by `mosmos-pretrain -o FILE.pt`, or unset it.")
        return explicit
    if preprocessed_dataset_folder is None:
        return None
    conventional = conventional_path(preprocessed_dataset_folder, plans, configuration)
    return str(conventional) if conventional.is_file() else None


# --------------------------------------------------------------------------- writing
def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``.

    A crash or a second Ctrl-C mid-write leaves the previous file (or none), never a truncated one.
    The file gets the mode a plain ``torch.save`` would give it (``mkstemp``'s temp file is 0600):
    the replaced file's mode, else 0666 minus the umask, like nnU-Net's own checkpoints.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_mosmos_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Validate ``payload`` (same rules as loading) and write it atomically."""
    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    payload.setdefault("version", VERSION)
    validate_checkpoint(payload, source=str(path))
    return atomic_torch_save(payload, path)


# --------------------------------------------------------------------------- reading
def load_mosmos_checkpoint(path: str | os.PathLike) -> dict:
    """Load on CPU and validate; :class:`CheckpointError` says what is wrong and how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file. {_HOW_TO_MAKE}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): a copy or a save that did not finish. Copy it again, "
                              f"or write a new one. {_HOW_TO_MAKE}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words every refusal "Weights only load failed"; only a pickled class is named as a GLOBAL
        # (or a blocked module): anything else is a cut or foreign file
        found = re.search(r"GLOBAL (\S+) was not an allowed global|whose module (\S+) is blocked", str(e))
        if not found:
            raise _unreadable(path, e) from None
        raise CheckpointError(
            f"{path} is not a MOSMOS checkpoint: it holds Python objects beyond tensors and plain "
            f"containers ({found.group(1) or found.group(2)}). A plain nnU-Net checkpoint (checkpoint_final.pth) "
            f"belongs to nnU-Net's -pretrained_weights, not here. {_HOW_TO_MAKE}") from None
    except (PermissionError, IsADirectoryError) as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or _first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - torch raises anything from KeyError to RuntimeError on garbage
        raise _unreadable(path, e) from None
    validate_checkpoint(ckpt, source=str(path))
    return ckpt


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} ({path.stat().st_size} bytes) is not a readable PyTorch file: truncated (a copy "
                           f"or save cut short: copy it again) or not a .pt at all ({_first_line(error)}). "
                           f"{_HOW_TO_MAKE}")


def _first_line(error: BaseException) -> str:
    """The first line of an exception's text, or its type when it has none (torch's EOFError on a cut file)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _check_encoder(entry, name: str, fail) -> None:
    if not isinstance(entry, dict):
        fail(f"'{name}' must be a dict, got {type(entry).__name__}")
    for key, kind in (("arch_class_name", str), ("arch_kwargs", dict), ("arch_kwargs_req_import", list),
                      ("input_channels", int), ("dim", int)):
        if not isinstance(entry.get(key), kind):
            fail(f"'{name}.{key}' is missing or not a {kind.__name__}")
    if entry["dim"] not in (2, 3):
        fail(f"'{name}.dim' must be 2 or 3, got {entry['dim']}")
    if not _is_state_dict(entry.get("state_dict")):
        fail(f"'{name}.state_dict' must be a non-empty dict of tensors")
    if any(k.startswith("encoder.") for k in entry["state_dict"]):
        fail(f"'{name}.state_dict' keys start with 'encoder.'; store the state dict of the network's "
             "`.encoder` module (keys without the prefix)")


def validate_checkpoint(ckpt, source: str = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the first problem found."""
    def fail(msg: str):
        raise CheckpointError(f"{source}: {msg}")

    if not isinstance(ckpt, dict):
        fail(f"not a MOSMOS checkpoint (top level is a {type(ckpt).__name__}, not a dict). {_HOW_TO_MAKE}")
    if ckpt.get("format") != FORMAT:
        if "network_weights" in ckpt or "trainer_name" in ckpt:
            what = "a plain nnU-Net training checkpoint (use it with nnUNetv2_train -pretrained_weights)"
        elif _is_state_dict(ckpt):
            what = "a bare state dict"
        else:
            what = f"a dict with keys {sorted(map(str, ckpt))[:8]}"
        fail(f"not a MOSMOS checkpoint: no format tag {FORMAT!r}; this looks like {what}. {_HOW_TO_MAKE}")
    version = ckpt.get("version")
    if not isinstance(version, int):
        fail(f"'version' must be an int, got {version!r}")
    if version > VERSION:
        fail(f"checkpoint version {version} is newer than this nnunet-mosmos understands ({VERSION}); "
             "upgrade nnunet-mosmos")
    missing = [k for k in ("encoder", "tag_decoder", "prompt_context", "text_encoder", "vocabulary",
                           "preprocessing", "provenance") if k not in ckpt]
    if missing:
        fail(f"missing entries {missing}; the file was not written by save_mosmos_checkpoint. {_HOW_TO_MAKE}")
    _check_encoder(ckpt["encoder"], "encoder", fail)
    if ckpt.get("encoder_3d") is not None:
        _check_encoder(ckpt["encoder_3d"], "encoder_3d", fail)
        if ckpt["encoder_3d"]["dim"] != 3:
            fail("'encoder_3d.dim' must be 3")
    dec = ckpt["tag_decoder"]
    if not isinstance(dec, dict) or not isinstance(dec.get("config"), dict) \
            or not isinstance(dec.get("stage"), int) or not _is_state_dict(dec.get("state_dict")):
        fail("'tag_decoder' must be {config: dict, stage: int, state_dict: dict of tensors}")
    ctx = ckpt["prompt_context"]
    if not isinstance(ctx, torch.Tensor) or ctx.ndim != 2:
        fail("'prompt_context' must be a tensor of shape n_ctx x text_dim")
    text = ckpt["text_encoder"]
    if not isinstance(text, dict) or not isinstance(text.get("name_or_path"), str) \
            or not isinstance(text.get("dim"), int):
        fail("'text_encoder' must be {name_or_path: str, dim: int, trained: bool}")
    if ctx.shape[1] != text["dim"] or dec["config"].get("text_dim", text["dim"]) != text["dim"]:
        fail(f"text widths disagree: prompt_context {tuple(ctx.shape)}, text_encoder.dim {text['dim']}, "
             f"tag_decoder.config.text_dim {dec['config'].get('text_dim')}")
    vocab = ckpt["vocabulary"]
    if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
        fail("'vocabulary' must be a non-empty list of tag names")
    if not isinstance(ckpt["preprocessing"], dict) or not isinstance(ckpt["provenance"], dict):
        fail("'preprocessing' and 'provenance' must be dicts")


# --------------------------------------------------------------------------- fitting an encoder
def fit_encoder_state(source: dict, target: dict, source_channels: int | None = None) -> tuple[dict, dict]:
    """Map a (2D or 3D) encoder state dict onto ``target`` (a state dict giving the wanted shapes).

    Per key: equal shape -> copied; 2D conv kernel vs 3D -> inflated (I3D, mean over depth); input
    channels differ on a kernel that reads the image (``source.shape[1] == source_channels``; None
    disables this) -> stem adapted. Returns ``(state, report)`` with report lists ``loaded``, ``inflated``,
    ``adapted``, ``missing``, ``unexpected``, ``mismatched`` (``key: src -> dst``); ``state`` holds
    only the keys that fit, so ``load_state_dict(state, strict=True)`` succeeds iff the last three
    lists are empty.
    """
    from nnunet_mosmos.encoders import adapt_input_channels, inflate_tensor

    report = {k: [] for k in ("loaded", "inflated", "adapted", "missing", "unexpected", "mismatched")}
    out = {}
    for key, want in target.items():
        if key not in source:
            report["missing"].append(key)
            continue
        w = source[key].detach().to("cpu")
        adapted = inflated = False
        if source_channels is not None and w.ndim >= 3 and w.shape[1] == source_channels \
                and w.shape[1] != want.shape[1]:
            w, adapted = adapt_input_channels(w, int(want.shape[1])), True
        if w.ndim + 1 == want.ndim and w.ndim >= 4:
            try:
                w, inflated = inflate_tensor(w, want.shape), True
            except ValueError:
                pass
        if tuple(w.shape) != tuple(want.shape):
            report["mismatched"].append(f"{key}: {tuple(source[key].shape)} -> {tuple(want.shape)}")
            continue
        out[key] = w.to(want.dtype).clone()
        report["adapted" if adapted else "inflated" if inflated else "loaded"].append(key)
        if adapted and inflated:
            report["inflated"].append(key)
    report["unexpected"] = sorted(set(source) - set(target))
    return out, report


def build_encoder(entry: dict, num_output_channels: int = 2) -> nn.Module:
    """The ``.encoder`` module described by a checkpoint's ``encoder``/``encoder_3d`` entry."""
    from nnunet_mosmos.encoders import network_from_architecture

    return network_from_architecture(entry["arch_class_name"], entry["arch_kwargs"], entry["arch_kwargs_req_import"],
                                     entry["input_channels"], num_output_channels).encoder


def recognition_modules(ckpt: dict, device="cpu") -> tuple[nn.Module, nn.Module]:
    """The pre-trained ``encoder`` and tag decoder of a (validated) checkpoint, weights loaded, in eval
    mode on ``device``: what tag recognition needs (mosmos-attention --checkpoint, mosmos-zeroshot)."""
    from nnunet_mosmos.tag_decoder import TagDecoder

    encoder = build_encoder(ckpt["encoder"])
    encoder.load_state_dict(ckpt["encoder"]["state_dict"])
    decoder = TagDecoder(**ckpt["tag_decoder"]["config"])
    decoder.load_state_dict(ckpt["tag_decoder"]["state_dict"])
    return encoder.to(device).eval(), decoder.to(device).eval()


# --------------------------------------------------------------------------- describing
def _topology(entry: dict) -> str:
    kw = entry["arch_kwargs"]
    n = sum(v.numel() for v in entry["state_dict"].values())
    return (f"{entry['arch_class_name'].rsplit('.', 1)[-1]} {entry['dim']}D, {entry['input_channels']} input "
            f"channel(s), {kw.get('n_stages')} stages, features {kw.get('features_per_stage')}, strides "
            f"{kw.get('strides')}, {n / 1e6:.2f} M parameters")


def describe_checkpoint(ckpt: dict) -> str:
    """Human-readable summary (what ``mosmos-inspect`` prints)."""
    prov, pre, dec = ckpt.get("provenance", {}), ckpt.get("preprocessing", {}), ckpt["tag_decoder"]
    lines = [f"MOSMOS checkpoint (format {ckpt['format']} v{ckpt['version']})",
             f"  encoder:       {_topology(ckpt['encoder'])}"]
    if ckpt.get("encoder_3d") is not None:
        how = "inflated from the 2D encoder" if ckpt["encoder"]["dim"] == 2 else "the 3D encoder, fitted to the dataset"
        lines.append(f"  encoder_3d:    {_topology(ckpt['encoder_3d'])} ({how})")
    target = prov.get("nnunet")
    if target:
        key = "encoder_3d" if ckpt.get("encoder_3d") is not None else "encoder"
        lines.append(f"  fits:          nnU-Net {target['dataset']} plans {target['plans']} configuration "
                     f"{target['configuration']} ({target.get('input_channels', '?')} input channel(s); "
                     f"load '{key}' into the network's .encoder)")
    else:
        lines.append("  fits:          any nnU-Net configuration with this encoder topology (default "
                     "topology; pass -d/-c to mosmos-pretrain to match a dataset's plans)")
    cfg = dec["config"]
    if pre.get("dim") == 3:
        pre = {**pre, "normalization": f"{pre.get('normalization')}, spacing {pre.get('spacing') or 'native'}"}
    lines += [
        f"  tag decoder:   reads encoder stage {dec['stage']}; d_model {cfg.get('d_model')}, "
        f"{cfg.get('num_layers')} layers, {cfg.get('num_heads')} heads, ffn {cfg.get('ffn_dim')}",
        f"  prompt:        {ckpt['prompt_context'].shape[0]} context vectors x {ckpt['prompt_context'].shape[1]}",
        f"  text encoder:  {ckpt['text_encoder']['name_or_path']} (dim {ckpt['text_encoder']['dim']}, "
        f"{'trained' if ckpt['text_encoder'].get('trained') else 'frozen'})",
        f"  vocabulary:    {len(ckpt['vocabulary'])} tags: {', '.join(ckpt['vocabulary'])}",
        f"  preprocessing: {pre.get('channels')} channel(s), {pre.get('normalization')}, "
        f"{'patch' if pre.get('dim') == 3 else 'image'} size {pre.get('image_size')}",
    ]
    if prov:
        hist = prov.get("history") or []
        last = hist[-1] if hist else {}
        losses = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "contrastive", "tag", "organ", "negative_free")
                           if last.get(k))
        lines += [f"  trained:       {prov.get('steps')} steps ({prov.get('epochs')} epochs) on "
                  f"{prov.get('data')}; seed {prov.get('seed')}; loss weights {prov.get('loss_weights')}",
                  f"  last losses:   {losses or 'n/a'}",
                  f"  written:       {prov.get('date')} by nnunet-mosmos {prov.get('code_version')}",
                  f"  command:       {prov.get('command')}"]
    if ckpt.get("projections"):
        temp = ckpt["projections"].get("temperature")
        temp = f"{float(temp):.4f}" if temp is not None else "?"
        lines.append(f"  projections:   image + text heads, temperature {temp}")
    return "\n".join(lines)
