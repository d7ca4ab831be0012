"""Vocabulary pruning: keep the tokens the domain corpus uses, shrink the embedding matrix, and
write a matching ``tokenizer.json``.

A shopper-intent model uses a few thousand of a BERT vocabulary's 30k tokens, yet the
embedding matrix is a third of a 6-layer MiniLM. Kept: every token the corpus tokenizes to,
the special tokens, and every single-character piece (plain and ``##``) so that unseen words
still split into known pieces rather than ``[UNK]``. WordPiece matches greedily longest-first,
and every piece it used on the corpus is kept, so corpus texts tokenize exactly as before.
No library does this for a Hugging Face model + tokenizer pair (optimum and the tokenizers
package have no pruning), hence the hand-written remapping below.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekit.errors import ConversionError

__all__ = ["PruneResult", "prune_vocabulary"]

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    old_size: int
    new_size: int
    bytes_saved: int


def _kept_ids(tok_json: dict, tokenizer, texts: Sequence[str]) -> list[int]:
    vocab: dict[str, int] = tok_json["model"]["vocab"]
    keep: set[int] = set()
    for start in range(0, len(texts), 512):
        for ids in tokenizer(list(texts[start : start + 512]), add_special_tokens=True)["input_ids"]:
            keep.update(ids)
    keep.update(t["id"] for t in tok_json.get("added_tokens", []))
    for token, idx in vocab.items():
        bare = token[2:] if token.startswith("##") else token
        if len(bare) == 1 and not (token.startswith("[unused") or token.startswith("<unused")):
            keep.add(idx)
    for name in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token"):
        value = getattr(tokenizer, name, None)
        if value is not None and value in vocab:
            keep.add(vocab[value])
    return sorted(keep)


def _remap_tokenizer(tok_json: dict, kept: list[int]) -> dict:
    new_id = {old: new for new, old in enumerate(kept)}
    by_id = {idx: token for token, idx in tok_json["model"]["vocab"].items()}
    out = json.loads(json.dumps(tok_json))
    out["model"]["vocab"] = {by_id[old]: new for new, old in enumerate(kept)}
    for added in out.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    post = out.get("post_processor") or {}
    for processor in post.get("processors", [post]):
        for special in (processor.get("special_tokens") or {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
        for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
            if isinstance(processor.get(key), list):
                processor[key][1] = new_id[processor[key][1]]
    if out.get("padding"):
        out["padding"]["pad_id"] = new_id.get(out["padding"]["pad_id"], 0)
    return out


def prune_vocabulary(model, tokenizer, texts: Sequence[str], out_dir: Path) -> PruneResult:
    """Prune ``model``'s input embeddings in place and save model + tokenizer to ``out_dir``."""
    from transformers import AutoTokenizer

    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    if tok_json["model"]["type"] != "WordPiece":
        raise ConversionError(
            f"vocabulary pruning supports WordPiece tokenizers, this one is {tok_json['model']['type']}",
            hint="pass --no-prune-vocab",
        )
    kept = _kept_ids(tok_json, tokenizer, texts)
    embeddings = model.get_input_embeddings()
    old_size, dim = embeddings.weight.shape
    pad_old = model.config.pad_token_id
    new_embeddings = torch.nn.Embedding(
        len(kept), dim, padding_idx=kept.index(pad_old) if pad_old in kept else None
    )
    with torch.no_grad():
        new_embeddings.weight.copy_(embeddings.weight[kept])
    model.set_input_embeddings(new_embeddings)
    model.config.vocab_size = len(kept)
    if pad_old in kept:
        model.config.pad_token_id = kept.index(pad_old)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)  # config, special tokens map: then replace the vocabulary
    new_json = _remap_tokenizer(tok_json, kept)
    (out_dir / "tokenizer.json").write_text(json.dumps(new_json, ensure_ascii=False), encoding="utf-8")
    vocab_txt = out_dir / "vocab.txt"
    if vocab_txt.exists():
        ordered = sorted(new_json["model"]["vocab"].items(), key=lambda kv: kv[1])
        vocab_txt.write_text("".join(token + "\n" for token, _ in ordered), encoding="utf-8")
    check = AutoTokenizer.from_pretrained(out_dir, use_fast=True)
    if len(check) != len(kept):
        raise ConversionError(f"pruned tokenizer has {len(check)} tokens, expected {len(kept)}")
    saved = (old_size - len(kept)) * dim * embeddings.weight.element_size()
    log.info("vocabulary pruned %d -> %d tokens (%.1f MB saved)", old_size, len(kept), saved / 1e6)
    return PruneResult(old_size, len(kept), saved)
