from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Tests cache (teacher outputs, rebuilt encoders) in a directory of their own, never the user's.
os.environ["EDGEKIT_CACHE"] = tempfile.mkdtemp(prefix="edgekit-test-cache-")


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs(*modules: str):
    """Skip (with the reason) when an optional extra is missing."""
    missing = [m for m in modules if not has(m)]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (an edgekit extra)")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_splits(tmp_path_factory) -> dict[str, Path]:
    """A small slice of the embedded shop_intents data: 6 intents, every split."""
    from edgekit.data import load_dataset
    from edgekit.datasets import split_path

    keep = ["order_status", "store_hours", "refund_status", "gift_card", "talk_to_human", "out_of_scope"]
    out = tmp_path_factory.mktemp("small")
    paths = {}
    for split in ("train", "validation", "test"):
        ds = load_dataset(split_path(split))
        rows = [{"text": t, "label": y} for t, y in zip(ds.texts, ds.labels) if y in keep]
        random.Random(0).shuffle(rows)
        paths[split] = write_jsonl(out / f"{split}.jsonl", rows)
    return paths


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, small_splits) -> Path:
    """A tiny pretrained-encoder stand-in built in code (2-layer BERT + WordPiece tokenizer)."""
    pytest.importorskip("torch", reason="needs the convert extra")
    from edgekit.data import load_dataset
    from tests.tiny import make_tiny_bert

    texts = load_dataset(small_splits["train"]).texts
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-base"), texts)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, tiny_base, small_splits) -> Path:
    """The tiny BERT fine-tuned on the small splits: a real classifier directory with labels."""
    from edgekit.converters.training.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("tiny-classifier") / "model"
    # fp32 and patience 2, as the tests' accuracy figures were set with (bf16 is the default on CPUs
    # that have it: a tiny model at lr 5e-3 trains differently under it)
    finetune(FinetuneConfig(train=small_splits["train"], validation=small_splits["validation"], out=out,
                            base=tiny_base, epochs=10, batch_size=16, learning_rate=5e-3, progress=False,
                            patience=2, mixed_precision="no"))
    return out


@pytest.fixture(scope="session")
def tiny_export_inputs(tiny_classifier, small_splits):
    """ExportInputs for the tiny classifier: max_length 32, buckets 16/32, calibration texts from train."""
    from edgekit.converters.exporters.inputs import export_inputs_for
    from edgekit.data import load_dataset

    texts = load_dataset(small_splits["train"]).texts
    return export_inputs_for(tiny_classifier, max_length=32, buckets=(16, 32), calibration_texts=texts[:64])


ALL_FORMATS = {"targets": ("onnx", "openvino", "tflite"),
               "variants": {"onnx": ["fp32", "int8-dynamic"], "openvino": ["int8-weights"], "tflite": ["int8-dynamic"]}}


def convert_config(tiny_classifier, small_splits, out, **kw):
    from edgekit.config import ConvertConfig

    base = dict(model_dir=tiny_classifier, train=small_splits["train"], validation=small_splits["validation"],
                test=small_splits["test"], out=out, targets=("onnx",),
                variants={"onnx": ["fp32", "int8-dynamic"]}, epochs=4, learning_rate=3e-3, batch_size=16,
                student=Path("teacher-layers"), student_layers=1, latency_texts=5, progress=False,
                max_accuracy_drop=100.0)
    base.update(kw)
    return ConvertConfig(**base)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_classifier, small_splits):
    """The tiny classifier converted to ONNX (fp32, int8), OpenVINO int8 and TFLite int8, once per session."""
    from edgekit.converters.pipeline import convert

    out = tmp_path_factory.mktemp("bundles")
    result = convert(convert_config(tiny_classifier, small_splits, out, **ALL_FORMATS), echo=lambda s: None)
    keep = os.environ.get("EDGEKIT_KEEP_BUNDLES")
    if keep:  # .ci/run serves these again from a runtime-only install (no torch) and compares labels
        _keep_for_runtime_check(result, small_splits, Path(keep))
    return result


def _keep_for_runtime_check(result, small_splits, dest: Path) -> None:
    from edgekit.data import load_dataset
    from edgekit.runtime.model import load_bundle_model

    dest.mkdir(parents=True, exist_ok=True)
    texts = list(load_dataset(small_splits["test"]).texts)
    from edgekit.converters.measure import batched_logits

    expected = {}
    chunk = 32  # the check sends these chunks (int8-dynamic answers once depended on them: no longer)
    for bundle in result.bundles:
        shutil.copytree(bundle, dest / bundle.name, dirs_exist_ok=True)
        model = load_bundle_model(bundle)
        expected[bundle.name] = [model.info.labels[i]
                                 for i in batched_logits(model, texts, batch_size=chunk).argmax(-1)]
        model.close()
    (dest / "expected.json").write_text(json.dumps({"texts": texts, "labels": expected, "chunk": chunk}))


def torch_logits(inputs, texts, pad_to=None):
    """Reference logits of the student in torch for the same token ids the runtime feeds."""
    import torch

    ids, mask = inputs.encode(list(texts), pad_to)
    with torch.no_grad():
        return inputs.wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
