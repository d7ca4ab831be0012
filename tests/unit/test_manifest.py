from __future__ import annotations

import json

import pytest

from edgekit.errors import ManifestError
from edgekit.manifest import MANIFEST_NAME, Manifest


def _bundle(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"model-bytes")
    (tmp_path / "tokenizer.json").write_text("{}")
    m = Manifest(format="onnx", precision="int8", labels=["a", "b"], model_files=["model.onnx"], max_length=32)
    m.save(tmp_path)
    return m


def test_roundtrip_and_checksums(tmp_path):
    m = _bundle(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == m
    assert set(loaded.files) == {"model.onnx", "tokenizer.json"}
    loaded.verify(tmp_path)


def test_tampered_file_is_refused(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"evil-bytes")
    with pytest.raises(ManifestError, match="model.onnx does not match its checksum"):
        Manifest.load(tmp_path).verify(tmp_path)


def test_missing_file_is_refused(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match="tokenizer.json is listed in the manifest but missing"):
        Manifest.load(tmp_path).verify(tmp_path)


def test_schema_version_and_unknown_fields(tmp_path):
    _bundle(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["schema_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema version 99 is not supported"):
        Manifest.load(tmp_path)
    data["schema_version"] = 1
    data["surprise"] = 1
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="unknown fields: surprise"):
        Manifest.load(tmp_path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(ManifestError, match="is not a bundle"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)


def test_invalid_values():
    with pytest.raises(ManifestError, match="no labels"):
        Manifest(format="onnx", precision="fp32", labels=[], model_files=["m"], max_length=8)
    with pytest.raises(ManifestError, match="threshold"):
        Manifest(format="onnx", precision="fp32", labels=["a"], model_files=["m"], max_length=8,
                 calibration={"temperature": 1.0, "threshold": 1.5})


def test_save_is_atomic(tmp_path, monkeypatch):
    m = _bundle(tmp_path)
    before = (tmp_path / MANIFEST_NAME).read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("edgekit.manifest.os.replace", boom)
    m.version = "2"
    with pytest.raises(OSError):
        m.save(tmp_path)
    assert (tmp_path / MANIFEST_NAME).read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
