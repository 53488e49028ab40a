"""Initialise a MOSMOS network from a pre-training checkpoint, by key, with shape checks.

Unlike nnU-Net's ``-pretrained_weights`` (which demands every key with identical shape), this
loads what fits and says exactly what happened to each tensor:

* ``loaded``   — same key, same shape;
* ``inflated`` — a 2D kernel ``O x I x kh x kw`` into a 3D ``O x I x kd x kh x kw`` (I3D: repeat / kd);
* ``adapted``  — the stem's input channels changed (e.g. 1 pre-trained -> 4 MRI channels);
* ``skipped``  — missing in the checkpoint or a shape that no rule maps.

The encoder loads whole or not at all: a checkpoint whose encoder does not fit (another topology,
e.g. a 3D checkpoint for ``2d``) is an error naming the fix (pre-train with the same ``-d/-c``),
the same verdict ``mosmos-inspect -d -c`` gives. The tag decoder and prompt context load by key and
a partial fit there is reported with the numbers.
"""
from __future__ import annotations

import torch

from nnunet_mosmos.checkpoint import fit_encoder_state


class PretrainedMismatchError(RuntimeError):
    """The checkpoint does not fit the network; the message says why and what to run instead."""


def summarise(part: str, report: dict) -> str:
    text = (f"{part}: {len(report['loaded'])} loaded, {len(report['inflated'])} inflated 2D->3D, "
            f"{len(report['adapted'])} adapted to new input channels, "
            f"{len(report['missing']) + len(report['mismatched'])} skipped")
    skipped = report["mismatched"] + [f"{k}: not in checkpoint" for k in report["missing"]]
    if skipped:
        text += " (" + "; ".join(skipped[:4]) + (", ..." if len(skipped) > 4 else "") + ")"
    return text


def used(report: dict) -> int:
    return len(set(report["loaded"]) | set(report["inflated"]) | set(report["adapted"]))


def load_matching(module: torch.nn.Module, source: dict, source_channels: int | None = None) -> dict:
    """Copy every tensor of ``source`` that fits ``module`` (in place); return the report."""
    state, report = fit_encoder_state(source, module.state_dict(), source_channels)
    module.load_state_dict(state, strict=False)
    return report


def encoder_entry(ckpt: dict, conv_dim: int) -> dict:
    """The checkpoint's 3D export for a 3D network when there is one, else its (2D or 3D) encoder."""
    return ckpt["encoder_3d"] if conv_dim == 3 and ckpt.get("encoder_3d") else ckpt["encoder"]


def misfit(report: dict) -> str | None:
    """None when every encoder tensor loads (copied, inflated or stem-adapted), else what does not.

    The one verdict of ``mosmos-inspect -d -c`` and of the trainers: an encoder loads whole or not at
    all, because a half-initialised encoder (e.g. norms loaded, every conv skipped) looks like a
    pre-trained run in the logs while it is a scratch run in all that matters."""
    bad = {k: report[k] for k in ("missing", "unexpected", "mismatched") if report[k]}
    if not bad:
        return None
    return "; ".join(f"{k}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}" for k, v in bad.items())


def fit_encoder(encoder: torch.nn.Module, ckpt: dict) -> tuple[dict, dict]:
    """``(state, report)`` of the checkpoint's encoder mapped onto ``encoder`` (nothing loaded yet)."""
    conv_dim = 3 if "3d" in encoder.conv_op.__name__.lower() else 2
    entry = encoder_entry(ckpt, conv_dim)
    return fit_encoder_state(entry["state_dict"], encoder.state_dict(), entry.get("input_channels"))


def fit_configuration(ckpt: dict, configuration_manager, num_input_channels: int) -> tuple[torch.nn.Module, dict, dict]:
    """``(encoder, state, report)``: the encoder nnU-Net builds for this configuration and the checkpoint
    mapped onto it (nothing loaded). Cheap (no data, no optimizer), so the trainers check the fit in
    ``__init__``, before nnU-Net builds anything, and ``mosmos-inspect -d -c`` gives the same verdict.
    The random-number state is restored, so a seeded run initialises its real network as it would without
    this check."""
    from nnunet_mosmos.encoders import build_plain_network

    with torch.random.fork_rng(devices=[]):
        encoder = build_plain_network(configuration_manager, num_input_channels, 2, deep_supervision=False).encoder
    state, report = fit_encoder(encoder, ckpt)
    return encoder, state, report


def refit_hint(dataset_name: str, configuration: str, plans_name: str, instead: str | None = None) -> str:
    """The fix for a checkpoint of another topology: pre-train for this very configuration."""
    return (f"pre-train for it with `mosmos-pretrain -d {dataset_name} -c {configuration} -p {plans_name}`"
            + (f", or train without it ({instead})" if instead else ""))


def require_fit(report: dict, source_name: str = "checkpoint", fix: str = "") -> None:
    """:class:`PretrainedMismatchError` naming the file, what does not fit and the fix, unless it fits."""
    problem = misfit(report)
    if problem:
        raise PretrainedMismatchError(
            f"{source_name} does not fit this network's encoder ({problem}). It was pre-trained for another "
            "topology: " + (fix or "run `mosmos-pretrain -d <this dataset> -c <this configuration>` so the "
                            "encoder is built from the same nnU-Net plans") + ".")


def load_pretrained_encoder(encoder: torch.nn.Module, ckpt: dict, source_name: str = "checkpoint",
                            fix: str = "") -> dict:
    """Load the checkpoint's encoder into nnU-Net's ``encoder`` (whole, or raise); the report."""
    state, report = fit_encoder(encoder, ckpt)
    require_fit(report, source_name, fix)
    encoder.load_state_dict(state, strict=True)
    return report


def load_pretrained(network, ckpt: dict, source_name: str = "checkpoint", fix: str = "") -> dict[str, dict]:
    """Initialise ``network`` (a MOSMOSNetwork) from a validated MOSMOS checkpoint dict.

    The encoder must load whole (:func:`load_pretrained_encoder`); the tag decoder and prompt
    context load by key. Returns one report per part (encoder, tag decoder, prompt context).
    """
    reports = {"encoder": load_pretrained_encoder(network.encoder, ckpt, source_name, fix)}
    reports["tag decoder"] = load_matching(network.tag_branch.decoder, ckpt["tag_decoder"]["state_dict"])
    reports["prompt context"] = load_matching(network.tag_branch.prompt, {"ctx": ckpt["prompt_context"]})
    return reports
