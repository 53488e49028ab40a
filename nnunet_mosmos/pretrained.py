"""Initialise a MOSMOS network from a pre-training checkpoint, by key, with shape checks.

Unlike nnU-Net's ``-pretrained_weights`` (which demands every key with identical shape), this
loads what fits and says exactly what happened to each tensor:

* ``loaded``   — same key, same shape;
* ``inflated`` — a 2D kernel ``O x I x kh x kw`` into a 3D ``O x I x kd x kh x kw`` (I3D: repeat / kd);
* ``adapted``  — the stem's input channels changed (e.g. 1 pre-trained -> 4 MRI channels);
* ``skipped``  — missing in the checkpoint or a shape that no rule maps.

A checkpoint that fits none of the encoder is an error naming the fix (pre-train with the same
``-d/-c``); a partial fit is reported with the numbers so the log shows it.
"""
from __future__ import annotations

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


def load_pretrained(network, ckpt: dict, source_name: str = "checkpoint") -> dict[str, dict]:
    """Initialise ``network`` (a MOSMOSNetwork) from a validated MOSMOS checkpoint dict.

    The encoder comes from the checkpoint's 3D export when the network is 3D and one exists, else
    from the 2D encoder (inflated). Returns one report per part (encoder, tag decoder, prompt context).
    """
    conv_dim = 3 if "3d" in network.encoder.conv_op.__name__.lower() else 2
    entry = ckpt["encoder_3d"] if conv_dim == 3 and ckpt.get("encoder_3d") else ckpt["encoder"]
    reports = {"encoder": load_matching(network.encoder, entry["state_dict"], entry.get("input_channels"))}
    if used(reports["encoder"]) == 0:
        raise PretrainedMismatchError(
            f"{source_name} fits none of this network's encoder tensors ("
            f"{summarise('encoder', reports['encoder'])}). It was pre-trained for another topology: run "
            "`mosmos-pretrain -d <this dataset> -c <this configuration>` so the encoder is built from "
            "the same nnU-Net plans, or train without it (nnUNetTrainerMOSMOS_scratch).")
    reports["tag decoder"] = load_matching(network.tag_branch.decoder, ckpt["tag_decoder"]["state_dict"])
    reports["prompt context"] = load_matching(network.tag_branch.prompt, {"ctx": ckpt["prompt_context"]})
    return reports
