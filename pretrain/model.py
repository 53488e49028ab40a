"""The pre-training model: nnU-Net's encoder + global contrastive heads + the MOSMOS tag branch.

Built from the same pieces as the fine-tuning network so that weights move without renaming:
``encoder`` is the ``.encoder`` of the network nnU-Net builds from (the 2D twin of) the plans;
``tag_decoder`` is a :class:`~nnunet_mosmos.tag_decoder.TagDecoder` reading the encoder stage
chosen by ``stage_for_stride`` (``encoders.DEFAULT_TAG_STRIDE``), and ``prompt`` the shared
:class:`~nnunet_mosmos.text.PromptContext`. Sizes come from the same constants the trainer uses
(``tag_decoder.DECODER_PRESETS``, ``text.DEFAULT_N_CTX``/``DEFAULT_CONTEXT_INIT``), so a checkpoint
loads into the trainer's ``tag_branch`` unchanged.

The text encoder is frozen (MOSMOS keeps the report encoder fixed; only the prompt context and
the projection learn on the text side), so its weights never enter ``trainable_state_dict``.

The encoder is 2D or 3D as the spec says (native 3D pre-training of a ``3d_fullres`` encoder).
Heads of the optional objectives (``pretrain/objectives.py``) exist only when asked for:
``organ_proj`` (organ-grounded) and ``view_proj`` (negative-free), so a MOSMOS-only run keeps
exactly its old parameters and ``last.pt`` files.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mosmos.encoders import DEFAULT_TAG_STRIDE, encoder_from_architecture, stage_for_stride
from nnunet_mosmos.tag_decoder import DEFAULT_DECODER_PRESET, TagDecoder, decoder_preset
from nnunet_mosmos.text import DEFAULT_CONTEXT_INIT, DEFAULT_N_CTX, PromptContext, TextEncoder
from pretrain.objectives import masked_stage_means, projector

EMBED_DIM = 256
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0  # temperature never below 0.01 (CLIP's clamp)


def build_encoder(spec) -> nn.Module:
    """The ``.encoder`` of nnU-Net's network for ``spec`` (2D or 3D, 1 input channel, nnU-Net's init)."""
    return encoder_from_architecture(spec.arch_class_name, spec.arch_kwargs, spec.arch_kwargs_req_import, 1)


class PretrainModel(nn.Module):
    """``forward(images, texts)`` -> normalised image/text features, logit scale, tag logits."""

    def __init__(self, spec, text_encoder: TextEncoder, tag_names: list[str], embed_dim: int = EMBED_DIM,
                 decoder_kwargs: dict | None = None, n_ctx: int = DEFAULT_N_CTX,
                 context_init: str | None = DEFAULT_CONTEXT_INIT,
                 objectives=("mosmos",)):
        super().__init__()
        self.encoder = build_encoder(spec)
        channels = list(self.encoder.output_channels)
        self.stage = stage_for_stride(spec.strides, DEFAULT_TAG_STRIDE)
        self.text = text_encoder
        self.tag_names = list(tag_names)
        self.prompt = PromptContext(n_ctx, text_encoder.dim, init=text_encoder.context_init(context_init, n_ctx))
        self.tag_decoder = TagDecoder(channels[self.stage], text_encoder.dim,
                                      **{**decoder_preset(DEFAULT_DECODER_PRESET), **(decoder_kwargs or {})})
        self.image_proj = nn.Linear(channels[-1], embed_dim)
        self.text_proj = nn.Linear(text_encoder.dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INIT_TEMPERATURE)))
        self.embed_dim = embed_dim
        self.objectives = tuple(objectives)
        if "organ-grounded" in self.objectives:
            self.organ_proj = nn.Linear(sum(channels), embed_dim)
        if "negative-free" in self.objectives:
            self.view_proj = projector(channels[-1])

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def encode_image(self, images: torch.Tensor):
        skips = self.encoder(images)
        pooled = skips[-1].flatten(2).mean(-1)  # global average pool of the deepest stage
        return F.normalize(self.image_proj(pooled).float(), dim=-1), skips

    #: optional ``pretrain.text_cache.ReportEmbeddingCache`` of the frozen encoder's features (training only)
    report_cache = None

    def encode_text(self, texts) -> torch.Tensor:
        with torch.no_grad():
            cached = self.report_cache is not None and self.training
            feats = self.report_cache(texts) if cached else self.text.encode(texts)
        return F.normalize(self.text_proj(feats).float(), dim=-1)

    def forward(self, images: torch.Tensor, texts, view2: torch.Tensor | None = None,
                organs: dict | None = None) -> dict:
        """``organs``: {"items": [(batch index, label value)], "texts": [str], "negatives": [[str] * K]}
        from the engine (pretrain/grounding.py); ``view2``: the second view of the negative-free objective."""
        image, skips = self.encode_image(images)
        tag_embeddings = self.prompt(self.text, self.tag_names)
        tags = self.tag_decoder(skips[self.stage], tag_embeddings)
        out = {"image": image, "text": self.encode_text(texts), "logit_scale": self.scale(),
               "tag_logits": tags.logits}
        if view2 is not None:
            image2, skips2 = self.encode_image(view2)
            out["image2"] = image2
            out["view1"] = self.view_proj(skips[-1].flatten(2).mean(-1))
            out["view2"] = self.view_proj(skips2[-1].flatten(2).mean(-1))
        if organs is not None and organs["items"]:
            pooled = masked_stage_means(skips, organs["mask"], organs["items"])
            out["organ"] = F.normalize(self.organ_proj(pooled).float(), dim=-1)
            k = len(organs["negatives"][0]) if organs["negatives"] else 0
            flat = list(organs["texts"]) + [t for row in organs["negatives"] for t in row]
            encoded = self.encode_text(flat)
            m = len(organs["texts"])
            out["organ_text"] = encoded[:m]
            out["organ_negatives"] = encoded[m:].reshape(m, k, -1) if k else None
            out["organ_texts"] = list(organs["texts"])
        return out

    def trainable_state_dict(self) -> dict:
        """Everything except the frozen text encoder (what last.pt stores)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text.")}

    def load_trainable_state_dict(self, state: dict) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("text.")]
        if missing or unexpected:
            raise RuntimeError(f"training state does not fit this model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
