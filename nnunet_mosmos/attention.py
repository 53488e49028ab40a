"""Pixel-tag attention maps for people: NIfTI maps aligned with the input + PNG overlays.

From a trained model folder, nnU-Net does all the geometry: its preprocessor, its sliding-window
predictor (Gaussian-weighted aggregation over tiles) and its export steps (resampling back,
un-cropping, un-transposing). The only trick is :class:`AttentionAsLogits`, which makes the
network's "logits" the (mean-1 rescaled, upsampled) attention maps, so the predictor aggregates
maps exactly as it aggregates predictions. Maps are written with the same spacing/origin/direction
nnU-Net writes its segmentations with.

From a pre-training checkpoint alone (no segmentation labels ever seen), see ``pretrained_maps``:
image-level tag probabilities (organ presence) and per-tag maps, slice-wise for 3D volumes.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunet_mosmos.images import check_complete, read_image
from nnunet_mosmos.io_checks import constant_image_warning, write_text_atomic
from nnunet_mosmos.network import PLANS_KEY
from nnunet_mosmos.slices import checkpoint_slices


class AttentionAsLogits(nn.Module):
    """Wraps a MOSMOSNetwork: output channel 0 is zero, channels 1..K the tag maps at input size."""

    def __init__(self, network):
        super().__init__()
        self.net = network

    def forward(self, x):
        maps = self.net.tag_maps(x)[1]
        return torch.cat([torch.zeros_like(maps[:, :1]), maps], dim=1)


def _write_like_nnunet(array: np.ndarray, path: Path, properties: dict) -> None:
    import SimpleITK as sitk

    if "sitk_stuff" not in properties:
        raise RuntimeError("attention export supports SimpleITK-readable images (NIfTI, MHA, NRRD) only")
    if len(properties["sitk_stuff"]["spacing"]) == 2:
        array = array[0]
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    image.SetSpacing(properties["sitk_stuff"]["spacing"])
    image.SetOrigin(properties["sitk_stuff"]["origin"])
    image.SetDirection(properties["sitk_stuff"]["direction"])
    sitk.WriteImage(image, str(path), True)


def _to_original_geometry(maps: torch.Tensor, predictor, properties: dict) -> np.ndarray:
    """K x preprocessed-shape maps -> K x original image array (nnU-Net's export steps)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    pm, cm = predictor.plans_manager, predictor.configuration_manager
    spacing_t = [properties["spacing"][i] for i in pm.transpose_forward]
    current = cm.spacing if len(cm.spacing) == len(properties["shape_after_cropping_and_before_resampling"]) \
        else [spacing_t[0], *cm.spacing]
    resampled = cm.resampling_fn_probabilities(maps, properties["shape_after_cropping_and_before_resampling"],
                                               current, spacing_t)
    resampled = torch.as_tensor(np.asarray(resampled)) if not isinstance(resampled, torch.Tensor) else resampled
    full = torch.zeros((resampled.shape[0], *properties["shape_before_cropping"]), dtype=torch.float32)
    full = insert_crop_into_image(full, resampled.float(), properties["bbox_used_for_cropping"])
    return np.asarray(full).transpose([0] + [i + 1 for i in pm.transpose_backward])


def overlay_png(image: np.ndarray, maps: np.ndarray, names: list[str], path: Path, title: str = "") -> Path:
    """One figure: per tag, the slice where its attention mass is largest, map over image.

    ``image`` is z x y x x (or y x x), ``maps`` K x same.
    """
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    if image.ndim == 2:
        image, maps = image[None], maps[:, None]
    lo, hi = np.percentile(image, [1, 99])
    k = len(names)
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= k:
            continue
        z = int(np.argmax(maps[i].reshape(maps.shape[1], -1).sum(1)))
        ax.imshow(np.clip((image[z] - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray")
        ax.imshow(maps[i, z], cmap="jet", alpha=0.45)
        ax.set_title(f"{names[i]} (z={z})", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout(h_pad=1.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def check_inputs(files) -> None:
    """``TruncatedImageError`` for the first input file cut short, before anything is loaded or written:
    here one file is a whole case (or channel), so a truncated one is refused, not skipped."""
    for file in files:
        check_complete(file)


def _warner(log):
    return log or (lambda msg: warnings.warn(msg, stacklevel=3))


def model_folder_maps(model_folder: str | Path, input_files: list[list[str]], output_folder: str | Path,
                      fold="0", checkpoint_name: str = "checkpoint_final.pth", device: str = "cpu",
                      png: bool = True, log=None) -> list[Path]:
    """Write ``<case>_attention_<tag>.nii.gz`` (+ ``<case>_attention.png``) for each case.

    ``input_files``: per case the list of channel files, nnU-Net style (``CASE_0000.nii.gz``, ...).
    ``log`` receives warnings (an image with one value everywhere); default: Python warnings.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    check_inputs(f for files in input_files for f in files)
    warn = _warner(log)
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    fold = fold if fold == "all" else int(fold)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,),
                                                   checkpoint_name=checkpoint_name)
    net = predictor.network
    if not hasattr(net, "tag_branch"):
        raise ValueError(f"{model_folder} was not trained with a MOSMOS trainer (its network has no tag "
                         "branch); attention maps need -tr nnUNetTrainerMOSMOS.")
    cfg = predictor.configuration_manager.configuration[PLANS_KEY]
    names = cfg["prompts"]
    net.load_state_dict(predictor.list_of_parameters[0])
    predictor.network = AttentionAsLogits(net).eval()
    predictor.list_of_parameters = [predictor.network.state_dict()]
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    written = []
    for files in input_files:
        case = Path(files[0]).name.split(".")[0].rsplit("_", 1)[0]
        data, _, props = preprocessor.run_case(files, None, predictor.plans_manager,
                                               predictor.configuration_manager, predictor.dataset_json)
        message = constant_image_warning(data, f"case {case} ({', '.join(map(str, files))}, after nnU-Net's "
                                               "preprocessing)")
        if message:
            warn(message)
        with torch.no_grad():
            maps = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data).float())[1:]
        maps = _to_original_geometry(maps, predictor, props)
        for name, m in zip(names, maps):
            path = output_folder / f"{case}_attention_{name.replace(' ', '_')}.nii.gz"
            _write_like_nnunet(m, path, props)
            written.append(path)
        if png:
            image = predictor.plans_manager.image_reader_writer_class().read_images(files[:1])[0][0]
            written.append(overlay_png(image, maps, names, output_folder / f"{case}_attention.png",
                                       f"{case}: pixel-tag attention"))
    write_text_atomic(output_folder / "attention_maps.json", json.dumps(
        {"model_folder": str(model_folder), "fold": str(fold), "tags": names,
         "files": [str(p.name) for p in written]}, indent=2))
    return written


@torch.no_grad()
def pretrained_maps(checkpoint: str | Path, image_files: list[str], output_folder: str | Path,
                    text_encoder: str | None = None, device: str = "cpu", png: bool = True,
                    batch_size: int = 16, log=None) -> dict:
    """Organ presence and per-tag maps from a pre-training checkpoint alone (no labels needed).

    2D images (PNG/JPG or 2D NIfTI) are one prediction; 3D volumes are processed slice by slice
    (axial, as pre-training saw them) and a tag's volume probability is its maximum over slices.
    Writes ``tag_probabilities.json``, per-tag NIfTI maps for 3D inputs (input geometry) and PNGs.
    ``log`` receives warnings (an image with one value everywhere); default: Python warnings.
    """
    import SimpleITK as sitk

    from nnunet_mosmos.checkpoint import load_mosmos_checkpoint, recognition_modules
    from nnunet_mosmos.tag_decoder import rescaled_maps
    from nnunet_mosmos.text import TextEncoder

    check_inputs(image_files)
    warn = _warner(log)
    ckpt = load_mosmos_checkpoint(checkpoint)
    dev = torch.device(device)
    encoder, decoder = recognition_modules(ckpt, dev)
    text = TextEncoder(text_encoder or ckpt["text_encoder"]["name_or_path"]).to(dev)
    tags = list(ckpt["vocabulary"])
    queries = text.encode_prompts(ckpt["prompt_context"].to(dev), tags)
    stage = ckpt["tag_decoder"]["stage"]
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for file in image_files:
        image = read_image(file)
        if image.GetNumberOfComponentsPerPixel() > 1:  # RGB PNG -> grey
            image = sitk.VectorIndex(image, 0)
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        message = constant_image_warning(array, file)
        if message:
            warn(message)
        volume = array if array.ndim == 3 else array[None]
        # pre-training's own view of the slices (nnunet_mosmos.slices); maps go back into the crop box
        inputs, (top, left, ch, cw) = checkpoint_slices(volume, ckpt["preprocessing"])
        probs, maps = [], np.zeros((len(tags), *volume.shape), dtype=np.float32)  # K x z x y x x
        for start in range(0, volume.shape[0], batch_size):
            out = decoder(encoder(inputs[start:start + batch_size].to(dev))[stage], queries)
            probs.append(torch.sigmoid(out.logits).cpu())
            maps[:, start:start + batch_size, top:top + ch, left:left + cw] = \
                rescaled_maps(out.attention, (ch, cw)).cpu().transpose(0, 1).numpy()
        probs = torch.cat(probs)
        name = Path(file).name.split(".")[0]
        results[name] = {t: round(float(p), 4) for t, p in zip(tags, probs.max(0).values)}
        if array.ndim == 3:
            for t, m in zip(tags, maps):
                out_image = sitk.GetImageFromArray(m.astype(np.float32))
                out_image.CopyInformation(image)
                sitk.WriteImage(out_image, str(output_folder / f"{name}_attention_{t.replace(' ', '_')}.nii.gz"), True)
        if png:
            best = [i for i, _ in sorted(enumerate(probs.max(0).values), key=lambda kv: -kv[1])[:8]]
            overlay_png(volume, maps[best], [f"{tags[i]} p={results[name][tags[i]]:.2f}" for i in best],
                        output_folder / f"{name}_attention.png", f"{name}: tags from the pre-trained model")
    write_text_atomic(output_folder / "tag_probabilities.json", json.dumps(results, indent=2))
    return results
