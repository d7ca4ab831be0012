"""Build :class:`ExportInputs` for a Hugging Face classifier directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgekit.converters.exporters.base import ExportInputs

__all__ = ["export_inputs_for"]


def export_inputs_for(
    model_dir: Path,
    *,
    max_length: int,
    buckets: Sequence[int],
    calibration_texts: Sequence[str],
    model=None,
) -> ExportInputs:
    """``model`` (already loaded, e.g. the freshly distilled student) or the one in ``model_dir``.

    The tokenizer is the runtime's own (``tokenizer.json`` via the tokenizers package), so what
    the exporters calibrate on is token for token what the device will feed the model.
    """
    from edgekit.converters.classifier import ExportWrapper, load_classifier
    from edgekit.runtime.tokenize import TextTokenizer

    if model is None:
        model = load_classifier(Path(model_dir), attn_implementation="eager")
    model = model.eval().cpu()
    tokenizer_file = Path(model_dir) / "tokenizer.json"
    tokenizer = TextTokenizer(tokenizer_file, max_length)
    return ExportInputs(
        wrapper=ExportWrapper(model).eval(),
        tokenizer_file=tokenizer_file,
        num_labels=model.config.num_labels,
        max_length=max_length,
        buckets=tuple(sorted(buckets)),
        calibration_texts=list(calibration_texts),
        encode=tokenizer.encode,
    )
