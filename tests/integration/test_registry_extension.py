"""The structure a successor extends: a format is an exporter module with its spec, an engine a
backend module with its spec. Shown by registering a fake format and a fake engine at run time
(the test's own classes, nothing else edited) and converting and serving a tiny model through
them; and every real format must have an export test and an engine that serves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, convert_config, needs


def test_every_registered_format_has_an_export_test_and_an_engine():
    from edgekit.converters.exporters import load_formats
    from edgekit.registry import engines_for
    from edgekit.runtime.backends import load_engines

    formats, _ = load_formats(), load_engines()
    assert formats.names(), "no format registered"
    for name in formats:
        assert (REPO / "tests" / "integration" / f"test_export_{name}.py").is_file(), f"format {name} has no export test"
        assert engines_for(name), f"no engine serves the {name} format"


class FakeExporter:
    """A format of its own: ONNX bytes under another file name, made by the ONNX exporter's fp32 path."""

    format = "fakefmt"

    def variants(self) -> list[str]:
        return ["fp32"]

    def export(self, inputs, variant, out_dir: Path):
        from edgekit.converters.exporters.base import ExportedArtifact
        from edgekit.converters.exporters.onnx import export_fp32

        out_dir.mkdir(parents=True, exist_ok=True)
        export_fp32(inputs, out_dir / "model.fake")
        return ExportedArtifact(self.format, "fp32", variant, out_dir, ["model.fake"])


def load_fake(bundle_dir: Path, manifest, *, threads=None):
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(Path(bundle_dir) / manifest.model_files[0], threads=threads)
    backend.name = "fake-engine"
    return backend


@pytest.fixture
def fake_format():
    from edgekit.converters.exporters import load_formats
    from edgekit.registry import ENGINES, FORMATS, EngineSpec, FormatSpec
    from edgekit.runtime.backends import load_engines

    load_formats(), load_engines()
    FORMATS.add_spec(FormatSpec(name="fakefmt", exporter=f"{__name__}:FakeExporter", variants=("fp32",),
                                demo_variants=("fp32",), requires=("onnxruntime",), default_target=False))
    ENGINES.add_spec(EngineSpec(name="fake-engine", loader=f"{__name__}:load_fake", formats=("fakefmt",),
                                requires=("onnxruntime",), distributions=("onnxruntime",)))
    try:
        yield
    finally:
        FORMATS.remove("fakefmt")
        ENGINES.remove("fake-engine")


@needs("torch", "transformers", "onnxruntime", "onnx", "grpc")
def test_a_format_and_engine_registered_at_run_time_convert_and_serve(tmp_path, tiny_classifier, small_splits,
                                                                        fake_format):
    from edgekit.converters.pipeline import convert
    from edgekit.manifest import Manifest
    from edgekit.runtime.client import EdgeClient
    from edgekit.runtime.model import load_bundle_model
    from edgekit.runtime.server import build_server

    result = convert(convert_config(tiny_classifier, small_splits, tmp_path / "out", targets=("fakefmt",),
                                    variants={"fakefmt": ["fp32"]}, epochs=1), echo=lambda s: None)
    [bundle] = result.bundles
    assert bundle.name == "fakefmt-fp32" and Manifest.load(bundle).model_files == ["model.fake"]
    model = load_bundle_model(bundle)
    assert model.info.backend == "fake-engine"
    server = build_server(model, host="127.0.0.1", port=0)
    try:
        with EdgeClient(server.address, timeout_s=10) as client:
            [prediction] = client.classify(["where is my order"])
        assert prediction.label in Manifest.load(bundle).labels
    finally:
        server.stop(grace_s=0)
