"""DDP (gloo, 2 CPU processes): the branch trains under DistributedDataParallel as nnU-Net wraps it.

The prompt context is a network parameter used *outside* forward (through the frozen text encoder);
this checks DDP all-reduces its gradient with find_unused_parameters=False, also with lambda = 0.
"""
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))


def _worker(rank, world, init_file, text_dir, weight, out_file):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunet_mosmos.encoders import build_plain_network
    from nnunet_mosmos.losses import PixelTagAligningLoss
    from nnunet_mosmos.network import MOSMOSNetwork, TagBranchConfig
    from nnunet_mosmos.text import TextEncoder
    from plans_fixtures import configuration

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    cm = configuration(2)
    text = TextEncoder(text_dir)
    net = MOSMOSNetwork(build_plain_network(cm, 1, 3, True),
                        TagBranchConfig(num_tags=2, text_dim=text.dim, stage=3, d_model=32, num_heads=4, ffn_dim=64))
    ddp = DDP(net)
    torch.manual_seed(rank)  # different data per rank
    x = torch.randn(2, 1, *cm.patch_size)
    target = torch.randint(0, 3, (2, 1, *cm.patch_size)).float()
    emb = net.tag_branch.prompt(text, ["liver", "spleen"])
    out = ddp(x, tag_embeddings=emb)
    seg_loss = sum(torch.nn.functional.cross_entropy(s, torch.nn.functional.interpolate(target, s.shape[2:])[:, 0].long())
                   for s in out.seg)
    loss = seg_loss + weight * PixelTagAligningLoss()(out.attention, out.tag_logits, target)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    torch.save({"grads": grads, "missing": missing}, f"{out_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("weight", [0.5, 0.0])
def test_gradients_are_synchronised_including_the_prompt_context(tmp_path, tiny_text_encoder, weight):
    out_file = tmp_path / "grads"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tiny_text_encoder), weight, str(out_file)),
                       nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(f"{out_file}.{r}", weights_only=True) for r in (0, 1))
    assert r0["missing"] == [] and r1["missing"] == []  # every parameter got a gradient
    assert "tag_branch.prompt.ctx" in r0["grads"]
    for name, g in r0["grads"].items():
        assert torch.allclose(g, r1["grads"][name], atol=1e-6), name
