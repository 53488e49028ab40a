"""Turn a finished pre-training run into the checkpoint of ``nnunet_mosmos.checkpoint``.

With ``-d/-c`` the export *proves* the transfer instead of hoping for it: it builds the network
nnU-Net builds for that configuration (``build_plain_network``, the dataset's input channels),
maps the pre-trained 2D encoder onto its ``.encoder`` (same keys; 3D configurations get I3D-
inflated kernels; the stem is adapted to the dataset's channel count) and loads it with
``strict=True``. A 3D configuration's result is stored as ``encoder_3d``, ready to load as is.
"""
from __future__ import annotations

import copy
from datetime import datetime, timezone

from nnunet_mosmos.checkpoint import FORMAT, VERSION, fit_encoder_state
from nnunet_mosmos.text import portable_reference


class ExportError(RuntimeError):
    """The pre-trained encoder does not fit the target configuration (should not happen with -d/-c)."""


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def code_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunet-mosmos")
    except Exception:  # noqa: BLE001 - not installed (running from a checkout)
        return "unknown"


def target_encoder(encoder_2d: dict, target: dict) -> tuple[dict | None, dict]:
    """(``encoder_3d`` entry or None for a 2D configuration, transfer report) for ``target``.

    ``encoder_2d`` is the pre-trained entry: 2D (inflated here) or native 3D (loaded as is, only the
    stem adapted when the dataset has several channels). Raises ExportError when any key is missing,
    unexpected or of a shape that cannot be made to fit.
    """
    from nnunet_mosmos.encoders import build_plain_network
    from pretrain.plans import load_configuration

    cm, _ = load_configuration(target["dataset"], target["configuration"], target["plans"])
    channels = int(target["input_channels"])
    encoder = build_plain_network(cm, channels, 2, deep_supervision=False).encoder
    state, report = fit_encoder_state(encoder_2d["state_dict"], encoder.state_dict(),
                                      source_channels=encoder_2d["input_channels"])
    problems = {k: report[k] for k in ("missing", "unexpected", "mismatched") if report[k]}
    if problems:
        raise ExportError(f"the pre-trained encoder does not fit {target['dataset']} {target['configuration']}: "
                          f"{ {k: v[:5] for k, v in problems.items()} }")
    encoder.load_state_dict(state, strict=True)  # the proof that nnU-Net's encoder takes it
    summary = {k: len(v) for k, v in report.items()}
    if len(cm.patch_size) == 2:
        return None, summary
    entry = {"arch_class_name": cm.network_arch_class_name,
             "arch_kwargs": copy.deepcopy(cm.network_arch_init_kwargs),
             "arch_kwargs_req_import": list(cm.network_arch_init_kwargs_req_import),
             "input_channels": channels, "dim": 3, "state_dict": state}
    return entry, summary


def build_payload(trainer) -> dict:
    """The checkpoint dict for a trainer that has finished (see nnunet_mosmos.checkpoint)."""
    model, spec, cfg = trainer.model, trainer.spec, trainer.cfg
    encoder = {"arch_class_name": spec.arch_class_name, "arch_kwargs": copy.deepcopy(spec.arch_kwargs),
               "arch_kwargs_req_import": list(spec.arch_kwargs_req_import), "input_channels": 1, "dim": spec.dim,
               "state_dict": _cpu(model.encoder.state_dict())}
    nnunet = None
    encoder_3d = None
    if spec.target:
        encoder_3d, transfer = target_encoder(encoder, spec.target)
        nnunet = {k: spec.target[k] for k in ("dataset", "plans", "configuration", "input_channels")}
        nnunet["transfer"] = transfer
    payload = {
        "format": FORMAT, "version": VERSION,
        "encoder": encoder,
        "encoder_3d": encoder_3d,
        "tag_decoder": {"config": dict(model.tag_decoder.config), "stage": int(model.stage),
                        "state_dict": _cpu(model.tag_decoder.state_dict())},
        "prompt_context": model.prompt.ctx.detach().to("cpu").float().clone(),
        "text_encoder": {"name_or_path": portable_reference(model.text.name_or_path), "dim": int(model.text.dim), "trained": False},
        "vocabulary": list(model.tag_names),
        "preprocessing": preprocessing(spec),
        "provenance": {
            "data": trainer.source.description,
            "pairs": {"train": len(trainer.train_set), "val": len(trainer.val_set),
                      "skipped": dict(trainer.source.skipped.counts), "unreadable": len(trainer.unreadable),
                      "constant": len(trainer.constant)},
            "steps": trainer.step, "epochs": round(trainer.step / trainer.steps_per_epoch, 3),
            "history": trainer.history, "val_history": trainer.val_history,
            "loss_weights": {"contrastive": cfg.contrastive_weight, "tag": trainer.tag_weight,
                             **({"organ": cfg.organ_weight} if "organ-grounded" in cfg.objectives else {}),
                             **({"negative_free": cfg.negative_free_weight} if "negative-free" in cfg.objectives
                                else {})},
            "objectives": list(cfg.objectives),
            "optimizer": {"lr": cfg.lr, "tag_decoder_lr": cfg.tag_decoder_lr, "weight_decay": cfg.weight_decay,
                          "warmup_steps": trainer.warmup,
                          "batch_size": cfg.batch_size, "world_size": trainer.rt.world},
            "seed": cfg.seed, "code_version": code_version(), "command": cfg.command,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "nnunet": nnunet,
        },
        "projections": {"image": _cpu(model.image_proj.state_dict()), "text": _cpu(model.text_proj.state_dict()),
                        "temperature": float(1.0 / model.scale().detach()), "embed_dim": int(model.embed_dim)},
    }
    if "organ-grounded" in cfg.objectives:
        payload["projections"]["organ"] = _cpu(model.organ_proj.state_dict())
    return payload


def preprocessing(spec) -> dict:
    """How images were prepared, so fine-tuning and zero-shot use can check or repeat it."""
    norm = spec.normalization or {}
    use_mask = bool(norm.get("use_mask_for_norm", False))  # z-score inside the non-zero region (nnU-Net's flag)
    if spec.dim == 2:
        return {"channels": 1, "dim": 2, "normalization": "zscore-per-image", "use_mask_for_norm": use_mask,
                "image_size": list(spec.image_size)}
    return {"channels": 1, "dim": 3, "image_size": list(spec.image_size),
            "spacing": list(spec.spacing) if spec.spacing else None,
            "normalization": norm.get("scheme", "ZScoreNormalization"), "use_mask_for_norm": use_mask,
            "intensity_properties": norm.get("intensity_properties")}


__all__ = ["ExportError", "build_payload", "code_version", "target_encoder"]
