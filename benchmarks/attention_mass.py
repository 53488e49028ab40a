"""How much pixel-tag attention falls inside each organ, before and after fine-tuning (issue #10, item 5).

For every test slice that contains organ k, the map of tag k (a distribution over the slice, the
same mean-1 maps the U-Net is fed, upsampled to the slice) puts a fraction ``mass_k`` of its mass
inside the organ's mask. Uniform attention would put the organ's area fraction there, so the
``lift = mass / area`` is 1 for a map that knows nothing and grows as the map finds the organ.

* **before fine-tuning**: the pre-training checkpoint alone, its encoder, tag decoder and prompt
  context in nnU-Net's network for the study plans, queries from the dataset's class names;
* **after fine-tuning**: a MOSMOS model folder (``checkpoint_final.pth``).

Slices come from nnU-Net's own preprocessing of the test cases (the plans' spacing, normalisation
and cropping; the label map goes through the same steps), so the maps are exactly what training
and prediction see.

    python -m benchmarks.attention_mass --plans PLANS.json --dataset-json dataset.json \\
        --images imagesTs --labels labelsTs [--checkpoint PRE.pt] [--model-folder MODEL] -o mass.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def _cases(images: Path, labels: Path) -> list[tuple[list[str], str]]:
    out = []
    for label in sorted(labels.glob("*.nii.gz")):
        case = label.name[: -len(".nii.gz")]
        out.append(([str(images / f"{case}_0000.nii.gz")], str(label)))
    return out


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return torch.nn.functional.pad(x, (0, pw, 0, ph)) if ph or pw else x


@torch.no_grad()
def attention_mass(network, prompts: list[str], cases, plans_manager, configuration_manager, dataset_json,
                   tag_embeddings: torch.Tensor | None = None, batch: int = 16) -> dict:
    """Per organ (class index 1..K): mean attention mass inside the mask, mean area fraction, lift,
    over the slices where the organ is present; plus the per-case values."""
    from nnunet_mosmos.tag_decoder import rescaled_maps

    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    stride = int(np.prod([s[-1] for s in configuration_manager.pool_op_kernel_sizes]))
    network.eval()
    sums = {k: {"mass": [], "area": []} for k in range(1, len(prompts) + 1)}
    for files, label in cases:
        data, seg, _ = preprocessor.run_case(files, label, plans_manager, configuration_manager, dataset_json)
        image, seg = torch.from_numpy(data).float(), torch.from_numpy(seg[0]).long()
        for start in range(0, image.shape[1], batch):
            x = _pad_to(image[:, start:start + batch].transpose(0, 1), stride)
            skips = network.encoder(x)
            tags = network.tags(skips, tag_embeddings)
            maps = rescaled_maps(tags.attention, x.shape[2:])[..., :seg.shape[1], :seg.shape[2]]
            maps = maps / maps.sum((2, 3), keepdim=True)
            for i, z in enumerate(range(start, min(start + batch, image.shape[1]))):
                for k in sums:
                    mask = seg[z] == k
                    if mask.any():
                        sums[k]["mass"].append(float(maps[i, k - 1][mask].sum()))
                        sums[k]["area"].append(float(mask.float().mean()))
    out = {}
    for k, v in sums.items():
        mass, area = np.asarray(v["mass"]), np.asarray(v["area"])
        out[prompts[k - 1]] = {"slices": int(mass.size), "mass_inside": float(mass.mean()) if mass.size else None,
                               "area_fraction": float(area.mean()) if area.size else None,
                               "lift": float((mass / area).mean()) if mass.size else None}
    return out


def pretrained_network(checkpoint: str, plans_manager, configuration_manager, dataset_json, prompts,
                       text_encoder: str | None = None):
    """nnU-Net's network for the plans with the checkpoint's encoder, tag decoder and context, and
    the tag embeddings of ``prompts`` through the checkpoint's text encoder (what fine-tuning starts from)."""
    from nnunet_mosmos.checkpoint import load_mosmos_checkpoint
    from nnunet_mosmos.network import TagBranchConfig, build_mosmos_network
    from nnunet_mosmos.pretrained import load_pretrained
    from nnunet_mosmos.text import TextEncoder

    ckpt = load_mosmos_checkpoint(checkpoint)
    pre = ckpt["tag_decoder"]
    keys = ("d_model", "num_heads", "num_layers", "ffn_dim", "dropout", "self_attention")
    cfg = TagBranchConfig(num_tags=len(prompts), text_dim=int(pre["config"]["text_dim"]), stage=int(pre["stage"]),
                          n_ctx=int(ckpt["prompt_context"].shape[0]), **{k: pre["config"][k] for k in keys})
    n_out = len(dataset_json["labels"])
    net = build_mosmos_network(configuration_manager, len(dataset_json["channel_names"]), n_out, cfg, False)
    load_pretrained(net, ckpt, checkpoint)
    text = TextEncoder(text_encoder or ckpt["text_encoder"]["name_or_path"])
    with torch.no_grad():
        emb = net.tag_branch.prompt(text, prompts)
    return net, emb


def model_folder_network(model_folder: str, fold: str = "all"):
    """The trained MOSMOS network of a model folder, as nnU-Net's predictor loads it."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(fold if fold == "all" else int(fold),))
    net = predictor.network
    net.load_state_dict(predictor.list_of_parameters[0])
    return net, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention_mass", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--checkpoint", help="pre-training checkpoint (before fine-tuning); needs --plans/--dataset-json")
    p.add_argument("--plans", help="plans.json whose 2d configuration the checkpoint was pre-trained for")
    p.add_argument("--dataset-json")
    p.add_argument("-c", "--configuration", default="2d")
    p.add_argument("--model-folder", nargs="*", default=[], help="fine-tuned MOSMOS model folder(s), fold all")
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mosmos.tags import class_prompts

    cases = _cases(Path(args.images), Path(args.labels))[: args.max_cases]
    torch.set_num_threads(1)
    result = {"cases": [Path(c[1]).name for c in cases]}
    if args.checkpoint:
        dataset_json = json.loads(Path(args.dataset_json).read_text())
        pm = PlansManager(args.plans)
        cm = pm.get_configuration(args.configuration)
        prompts = class_prompts(dataset_json["labels"])
        net, emb = pretrained_network(args.checkpoint, pm, cm, dataset_json, prompts)
        result["before_finetuning"] = {"checkpoint": args.checkpoint,
                                       "organs": attention_mass(net, prompts, cases, pm, cm, dataset_json, emb)}
    for folder in args.model_folder:
        net, pm, cm, dataset_json = model_folder_network(folder)
        prompts = cm.configuration["mosmos_tag_branch"]["prompts"]
        result.setdefault("after_finetuning", {})[folder] = attention_mass(net, prompts, cases, pm, cm, dataset_json)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
