"""Mean pooling survives every export: the runtime's answers equal the torch classifier's, per format.

The tiny base is laid out as a sentence-transformers encoder, so the fine-tuned classifier pools
by masked mean. Each fp32 artifact is served through the runtime (its tokenizer, its padding,
its buckets) and compared with the torch model read directly (not through the export wrapper).
The [CLS] reading of the same weights gives other logits, so an export that dropped the pooling
would fail here.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.conftest import needs

pytestmark = needs("torch", "transformers", "onnxruntime", "onnx", "openvino", "litert_torch", "ai_edge_litert")


@pytest.fixture(scope="module")
def reference(tiny_classifier, small_splits):
    import torch
    from transformers import AutoTokenizer

    from edgekit.converters.classifier import PooledClassifier, load_classifier
    from edgekit.data import load_dataset

    model = load_classifier(tiny_classifier)
    assert isinstance(model, PooledClassifier) and model.pooling == "mean"
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    texts = list(load_dataset(small_splits["test"]).texts)[:40]
    enc = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
        hidden = model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        cls_logits = model.classifier(hidden[:, 0]).numpy()
    assert not np.allclose(logits, cls_logits, atol=1e-3)  # the pooling matters for these weights
    return texts, logits


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
def test_fp32_export_keeps_mean_pooling(tmp_path, tiny_classifier, tiny_export_inputs, reference, fmt):
    from edgekit.converters.exporters import get_exporter
    from edgekit.manifest import Manifest
    from edgekit.runtime.model import load_bundle_model

    texts, expected = reference
    art = get_exporter(fmt).export(tiny_export_inputs, "fp32", tmp_path / fmt)
    shutil.copy(tiny_classifier / "tokenizer.json", art.directory / "tokenizer.json")
    labels = [f"l{i}" for i in range(expected.shape[1])]
    Manifest(format=fmt, precision=art.precision, labels=labels, model_files=art.model_files, max_length=32,
             buckets=art.buckets, pooling="mean").save(art.directory)
    model = load_bundle_model(art.directory, threads=1)
    try:
        got = model.logits(texts)
    finally:
        model.close()
    np.testing.assert_allclose(got, expected, atol=2e-4)
