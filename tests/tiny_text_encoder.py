"""A tiny randomly initialised BERT + WordPiece tokenizer trained on the fly (offline, ~1 s).

Tests use it instead of a real model: the code path (AutoTokenizer/AutoModel from a local
folder, prompt context through the frozen encoder) is the same as with all-MiniLM-L6-v2.
"""
from pathlib import Path

CORPUS = [
    "the liver spleen kidney stomach aorta pancreas gallbladder lung brain heart esophagus",
    "right left kidney adrenal gland inferior vena cava portal vein splenic vein duodenum bladder",
    "a medical image of the abdomen chest head ct mri x-ray scan shows normal enlarged absent",
    "status post splenectomy nephrectomy cholecystectomy hepatomegaly splenomegaly lesion mass",
    "computed tomography of the upper abdomen with contrast demonstrates unremarkable organs",
]


def make_tiny_text_encoder(folder: Path, hidden: int = 32) -> Path:
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1)
    wp.save_model(str(folder))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    return folder
