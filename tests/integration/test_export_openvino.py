"""OpenVINO export → load with the runtime's openvino backend → same predictions as torch.

Also: the IR keeps dynamic batch/sequence axes, and the openvino backend runs an ONNX bundle.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgekit.data import load_dataset
from tests.conftest import needs, torch_logits

pytestmark = needs("torch", "openvino", "nncf")

# variant -> (logits atol or None, least argmax agreement with torch)
TOLERANCE = {"fp32": (1e-4, 1.0), "fp16": (1e-2, 0.97), "int8-weights": (None, 0.9), "int8": (None, 0.9)}


@pytest.fixture(scope="module")
def test_texts(small_splits) -> list[str]:
    return list(load_dataset(small_splits["test"]).texts)


@pytest.mark.parametrize("variant", list(TOLERANCE))
def test_openvino_roundtrip(tmp_path, tiny_export_inputs, test_texts, variant):
    import openvino as ov

    from edgekit.converters.exporters import get_exporter
    from edgekit.runtime.backends.openvino import OpenVinoBackend

    art = get_exporter("openvino").export(tiny_export_inputs, variant, tmp_path / variant)
    assert art.model_files == ["model.xml", "model.bin"] and art.buckets == []
    assert all((art.directory / f).is_file() for f in art.model_files)
    for port in ov.Core().read_model(str(art.directory / "model.xml")).inputs:
        shape = port.get_partial_shape()
        assert shape[0].is_dynamic and shape[1].is_dynamic, (port.get_names(), shape)

    backend = OpenVinoBackend(art.directory / "model.xml", threads=1)
    ref = torch_logits(tiny_export_inputs, test_texts)
    ids, mask = tiny_export_inputs.encode(test_texts, None)
    got = backend.run(ids, mask)
    assert got.shape == ref.shape and got.dtype == np.float32
    atol, least = TOLERANCE[variant]
    if atol is not None:
        np.testing.assert_allclose(got, ref, atol=atol)
    agreement = float((got.argmax(-1) == ref.argmax(-1)).mean())
    assert agreement >= least, agreement
    # dynamic axes: another batch size and sequence length run too
    ids2, mask2 = tiny_export_inputs.encode(test_texts[:3], 32)
    assert backend.run(ids2, mask2).shape == (3, ref.shape[1])
    backend.close()


def test_unknown_variant_is_refused(tmp_path, tiny_export_inputs):
    from edgekit.converters.exporters import get_exporter
    from edgekit.errors import ConversionError

    with pytest.raises(ConversionError, match="int4"):
        get_exporter("openvino").export(tiny_export_inputs, "int4", tmp_path)


def test_openvino_backend_runs_onnx_bundle(tmp_path, tiny_export_inputs, test_texts):
    """FORMAT_BACKENDS lets an ONNX bundle run on OpenVINO: the same logits as torch."""
    from edgekit.converters.exporters.onnx import export_fp32
    from edgekit.manifest import Manifest
    from edgekit.runtime.backends import load_backend

    export_fp32(tiny_export_inputs, tmp_path / "model.onnx")
    labels = [f"l{i}" for i in range(tiny_export_inputs.num_labels)]
    manifest = Manifest(format="onnx", precision="fp32", labels=labels, model_files=["model.onnx"], max_length=32)
    backend = load_backend(tmp_path, manifest, "openvino", threads=1)
    assert backend.name == "openvino"
    ref = torch_logits(tiny_export_inputs, test_texts, 32)
    ids, mask = tiny_export_inputs.encode(test_texts, 32)
    np.testing.assert_allclose(backend.run(ids, mask), ref, atol=1e-4)
    # and the backend needs neither torch nor the converters (a device has only the runtime extra)
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from edgekit.runtime.backends.openvino import OpenVinoBackend\n"
        f"OpenVinoBackend(Path({str(tmp_path / 'model.onnx')!r})).run(np.ones((1, 4), np.int64), np.ones((1, 4), np.int64))\n"
        "print(','.join(m for m in ('torch', 'transformers', 'nncf', 'edgekit.converters') if m in sys.modules) or '-')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "-"


def test_broken_model_file_is_a_manifest_error(tmp_path):
    from edgekit.errors import ManifestError
    from edgekit.runtime.backends.openvino import OpenVinoBackend

    (tmp_path / "model.xml").write_text("<net>not a model</net>")
    with pytest.raises(ManifestError, match="OpenVINO cannot load"):
        OpenVinoBackend(tmp_path / "model.xml")
