"""TFLite export → the runtime's tflite backend, bucket by bucket → same predictions as torch."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.data import load_dataset
from tests.conftest import needs, torch_logits

pytestmark = needs("torch", "litert_torch", "ai_edge_litert")

VARIANTS = ["fp32", "fp16", "int8-dynamic", "int8-weights", "int8-static"]


@pytest.fixture(scope="module")
def exporter():
    """One exporter for every variant: it converts fp32 once and quantizes the rest from it."""
    from edgekit.converters.exporters import get_exporter

    return get_exporter("tflite")


@pytest.fixture(scope="module")
def test_texts(small_splits):
    return list(load_dataset(small_splits["test"]).texts)


def run_rows(backend, ids, mask):
    """Batch 1 signatures: one call per row, as BundleModel does with max_batch = 1."""
    return np.concatenate([backend.run(ids[i : i + 1], mask[i : i + 1]) for i in range(len(ids))])


@pytest.mark.parametrize("variant", VARIANTS)
def test_tflite_roundtrip(tmp_path, exporter, tiny_export_inputs, test_texts, variant):
    from edgekit.runtime.backends.tflite import TfliteBackend

    art = exporter.export(tiny_export_inputs, variant, tmp_path / variant)
    assert art.model_files == ["model.tflite"] and (art.directory / "model.tflite").is_file()
    assert art.buckets == [16, 32] and art.variant == variant
    backend = TfliteBackend(art.directory / "model.tflite", art.buckets, threads=1)
    assert backend.buckets == (16, 32) and backend.max_batch == 1
    for bucket in backend.buckets:
        ref = torch_logits(tiny_export_inputs, test_texts, bucket)
        got = run_rows(backend, *tiny_export_inputs.encode(test_texts, bucket))
        assert got.shape == ref.shape and got.dtype == np.float32
        if variant == "fp32":
            np.testing.assert_allclose(got, ref, atol=1e-4)
        else:
            agreement = float((got.argmax(-1) == ref.argmax(-1)).mean())
            assert agreement >= 0.9, (bucket, agreement)
    backend.close()


def test_backend_refuses_what_the_model_cannot_run(tmp_path, exporter, tiny_export_inputs, test_texts):
    from edgekit.errors import InvalidInput, ManifestError, ModelError
    from edgekit.manifest import Manifest
    from edgekit.runtime.backends.tflite import TfliteBackend, load

    art = exporter.export(tiny_export_inputs, "fp32", tmp_path / "fp32")
    labels = [f"l{i}" for i in range(tiny_export_inputs.num_labels)]
    manifest = Manifest(format="tflite", precision="fp32", labels=labels, model_files=art.model_files,
                        max_length=32, buckets=art.buckets)
    backend = load(art.directory, manifest, threads=1)

    ids, mask = tiny_export_inputs.encode(test_texts[:2], 20)
    with pytest.raises(InvalidInput, match=r"lengths \[16, 32\], not 20"):
        backend.run(ids[:1], mask[:1])
    ids, mask = tiny_export_inputs.encode(test_texts[:2], 16)
    with pytest.raises(InvalidInput, match="batches of exactly 1"):
        backend.run(ids, mask)

    # A runtime that silently computes nothing (tflite-runtime did, NOTES.md) is an error, not logits.
    backend._signatures[16].runner = lambda **feed: {backend._signatures[16].output: np.zeros((1, len(labels)))}
    with pytest.raises(ModelError, match="all-zero logits"):
        backend.run(ids[:1], mask[:1])

    # The manifest is the source of truth and must agree with the model's signatures.
    with pytest.raises(ManifestError, match="do not belong together"):
        TfliteBackend(art.directory / "model.tflite", [16, 64])
