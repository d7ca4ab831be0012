"""The text classifier edgekit trains, distils and exports: an encoder, a pooling, a linear head.

Sentence-transformers encoders (all-MiniLM-L6-v2, all-mpnet-base-v2, paraphrase-MiniLM-L3-v2)
were trained to be read through the *masked mean* of their token states; reading them through
the [CLS] token and a pooler they never trained throws most of that away (issue 10: a frozen
MiniLM-L6 read at [CLS] lost 9 points on banking77 against the same encoder read by its mean).
Hugging Face's ``*ForSequenceClassification`` classes only pool at [CLS], so edgekit keeps its
own small module and one directory layout for it:

- ``config.json`` + ``model.safetensors``: the encoder, a standard ``AutoModel`` directory (any
  tool can load the encoder), with ``id2label``/``label2id`` and ``edgekit_pooling`` ("mean" or
  "cls") in the config;
- ``edgekit_head.safetensors``: the linear head (``weight`` [labels, hidden], ``bias`` [labels]);
- the tokenizer files.

Directories written by ``AutoModelForSequenceClassification`` (no ``edgekit_pooling`` key) still
load, through that class, with [CLS] pooling: a cloud model trained elsewhere stays usable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from edgekit.errors import ModelError

__all__ = [
    "ExportWrapper",
    "HEAD_FILE",
    "MASK_NEGATIVE",
    "POOLING_KEY",
    "PooledClassifier",
    "base_pooling",
    "load_classifier",
    "load_encoder",
    "mean_pool",
    "pooling_of",
]

HEAD_FILE = "edgekit_head.safetensors"
POOLING_KEY = "edgekit_pooling"
POOLINGS = ("mean", "cls")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence: what sentence-transformers' ``Pooling(mode='mean')`` computes."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def base_pooling(base_dir: Path) -> str:
    """The pooling a pretrained encoder was trained with: its sentence-transformers config, else [CLS]."""
    base_dir = Path(base_dir)
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    if config.get(POOLING_KEY) in POOLINGS:
        return config[POOLING_KEY]
    for pooling_file in sorted(base_dir.glob("*Pooling*/config.json")):
        settings = json.loads(pooling_file.read_text(encoding="utf-8"))
        if settings.get("pooling_mode_mean_tokens"):
            return "mean"
        if settings.get("pooling_mode_cls_token"):
            return "cls"
    if (base_dir / "modules.json").is_file() or (base_dir / "sentence_bert_config.json").is_file():
        return "mean"  # sentence-transformers' default pooling
    return "cls"


class PooledClassifier(torch.nn.Module):
    """encoder → pooling (mean or [CLS]) → dropout → linear head; returns ``.logits`` like HF models."""

    base_model_prefix = "encoder"  # where ExportWrapper finds the attention-mask builder

    def __init__(self, encoder, labels: list[str], pooling: str = "mean", head: torch.nn.Linear | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {pooling!r} (expected one of {', '.join(POOLINGS)})")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = head if head is not None else torch.nn.Linear(encoder.config.hidden_size, len(labels))
        config = encoder.config
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        setattr(config, POOLING_KEY, pooling)
        self.config = config

    @property
    def labels(self) -> list[str]:
        return [self.config.id2label[i] for i in range(self.config.num_labels)]

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        pooled = mean_pool(hidden, attention_mask) if self.pooling == "mean" else hidden[:, 0]
        return pooled, out.hidden_states

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        pooled, hidden_states = self.pool(input_ids, attention_mask, output_hidden_states)
        logits = self.classifier(self.dropout(pooled))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, embeddings) -> None:
        self.encoder.set_input_embeddings(embeddings)

    def save_pretrained(self, out: Path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        out = Path(out)
        self.encoder.save_pretrained(out, safe_serialization=safe_serialization)
        state = {k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
        save_file(state, str(out / HEAD_FILE))


def pooling_of(model_dir: Path) -> str | None:
    """"mean"/"cls" for an edgekit classifier directory, None for a Hugging Face ``*ForSequenceClassification``."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_dir}: cannot read config.json ({exc})") from exc
    return config.get(POOLING_KEY)


def load_encoder(model_dir: Path, *, attn_implementation: str | None = None):
    """The bare encoder (``AutoModel``) of a Hugging Face directory."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not used: classifier.*" is expected when a head is dropped
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return AutoModel.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load an encoder from {model_dir}: {exc}") from exc


def load_classifier(model_dir: Path, *, attn_implementation: str | None = None):
    """An edgekit classifier directory → :class:`PooledClassifier`; a HF classifier directory → its class."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    pooling = pooling_of(model_dir)
    if pooling is None:
        from transformers import AutoModelForSequenceClassification

        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        try:
            return AutoModelForSequenceClassification.from_pretrained(model_dir, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load the classifier in {model_dir}: {exc}") from exc
    encoder = load_encoder(model_dir, attn_implementation=attn_implementation)
    config = encoder.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    if not (model_dir / HEAD_FILE).is_file():
        raise ModelError(f"{model_dir}: {HEAD_FILE} is missing (config.json says {POOLING_KEY}={pooling!r})")
    state = load_file(str(model_dir / HEAD_FILE))
    head = torch.nn.Linear(config.hidden_size, len(labels))
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{model_dir}/{HEAD_FILE} does not fit {len(labels)} labels: {exc}") from exc
    return PooledClassifier(encoder, labels, pooling, head=head).eval()


# Added to attention scores at padded positions. transformers uses float32's minimum, which
# wrecks the activation ranges static int8 calibration sees; -30 gives exp(-30) ~ 1e-13 after
# softmax (the same outputs in fp32) with a sane range (NOTES.md: rescued static quantization).
MASK_NEGATIVE = -30.0


class ExportWrapper(torch.nn.Module):
    """(input_ids, attention_mask) int64 → logits float32; the graph every format exports."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        base = getattr(model, model.base_model_prefix, model)

        def finite_mask(attention_mask, input_shape=None, dtype=None):
            mask = attention_mask[:, None, None, :].to(torch.float32)
            return (1.0 - mask) * MASK_NEGATIVE

        # Eager attention calls get_extended_attention_mask; replace it on this instance only.
        base.get_extended_attention_mask = finite_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
