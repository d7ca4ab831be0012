"""ONNX export → load with the runtime's onnxruntime backend → same predictions as torch."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.data import load_dataset
from tests.conftest import needs, torch_logits

pytestmark = needs("torch", "onnxruntime", "onnx")


@pytest.mark.parametrize("variant", ["fp32", "int8-dynamic", "int8-dynamic-per-channel", "int8-static"])
def test_onnx_roundtrip(tmp_path, tiny_export_inputs, small_splits, variant):
    from edgekit.converters.exporters import get_exporter
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend

    art = get_exporter("onnx").export(tiny_export_inputs, variant, tmp_path / variant)
    assert art.model_files == ["model.onnx"] and (art.directory / "model.onnx").is_file()
    backend = OnnxRuntimeBackend(art.directory / "model.onnx", threads=1)
    texts = list(load_dataset(small_splits["test"]).texts)
    ref = torch_logits(tiny_export_inputs, texts)
    ids, mask = tiny_export_inputs.encode(texts, None)
    got = backend.run(ids, mask)
    assert got.shape == ref.shape
    agreement = float((got.argmax(-1) == ref.argmax(-1)).mean())
    if variant == "fp32":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    else:
        assert agreement >= 0.9, agreement
    # dynamic axes: another batch size and sequence length run too
    ids2, mask2 = tiny_export_inputs.encode(texts[:3], 32)
    assert backend.run(ids2, mask2).shape == (3, ref.shape[1])


def test_dynamic_int8_quantizes_the_fused_graph(tmp_path, tiny_export_inputs):
    """The transformer fusions run before dynamic quantization, so attention becomes QAttention."""
    import onnx

    from edgekit.converters.exporters import get_exporter

    art = get_exporter("onnx").export(tiny_export_inputs, "int8-dynamic-per-channel", tmp_path / "q")
    ops = {node.op_type for node in onnx.load(str(art.directory / "model.onnx")).graph.node}
    assert art.details["fused"] is True
    assert "QAttention" in ops, sorted(ops)
    assert "Softmax" not in ops  # no unfused attention left
