"""Tiny real models built in code: a 2-layer BERT with a WordPiece tokenizer learnt from the texts.

Real architecture, real tokenizer, real files: every export path runs on them in seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocab(texts: Sequence[str], size: int = 600) -> list[str]:
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    chars: set[str] = set()
    for text in texts:
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            words[word] += 1
            chars.update(word)
    pieces = sorted(chars) + ["##" + c for c in sorted(chars)]
    vocab = SPECIALS + pieces
    for word, _ in words.most_common():
        if len(vocab) >= size:
            break
        if word not in vocab:
            vocab.append(word)
    return vocab


def save_tokenizer(vocab: list[str], out: Path, model_max_length: int = 128) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )
    fast.save_pretrained(out)


def make_tiny_bert(out: Path, texts: Sequence[str], *, layers: int = 2, hidden: int = 32, seed: int = 0,
                   pooling: str | None = "mean") -> Path:
    """A pretrained-encoder stand-in: BertModel (no head) + tokenizer, saved as a HF directory.

    With ``pooling`` it is laid out as a sentence-transformers encoder (``1_Pooling/config.json``),
    as the packaged bases are, so every export test runs the mean-pooled graph.
    """
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    vocab = build_vocab(texts)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(vocab, out)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    if pooling is not None:
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(
            f'{{"pooling_mode_mean_tokens": {str(pooling == "mean").lower()}, '
            f'"pooling_mode_cls_token": {str(pooling == "cls").lower()}}}\n'
        )
    return out
