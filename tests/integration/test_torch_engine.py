"""The cloud model (a fine-tuned Hugging Face directory) loads through the same function as a bundle:
the torch engine behind the runtime tokenizer gives the classifier's own logits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgekit.errors import ManifestError
from tests.conftest import needs

pytestmark = needs("torch", "transformers")

TEXTS = ["where is my order", "i want a refund for the broken blender please", "hi", "is the tv in stock"]


def test_a_model_directory_loads_as_a_torch_bundle(tiny_classifier):
    import torch

    from edgekit.converters.evaluate import load_classifier_dir
    from edgekit.converters.training.loop import encode
    from edgekit.runtime.model import load_model

    model = load_model(tiny_classifier, threads=1, max_length=32)
    try:
        assert model.info.format == "torch" and model.info.backend == "torch"
        hf, tokenizer, labels = load_classifier_dir(tiny_classifier)
        assert list(model.info.labels) == labels
        with torch.no_grad():
            expected = hf(**encode(tokenizer, TEXTS, 32)).logits.numpy()
        np.testing.assert_allclose(model.logits(TEXTS), expected, atol=1e-5)
    finally:
        model.close()


def test_a_bundle_still_loads_as_a_bundle(converted):
    from edgekit.runtime.model import load_model

    bundle = next(p for p in converted.bundles if p.name.startswith("onnx"))
    model = load_model(bundle)
    try:
        assert model.info.format == "onnx"
    finally:
        model.close()


def test_a_directory_without_label_names_or_tokenizer_is_refused(tiny_classifier, tmp_path):
    from edgekit.runtime.model import load_model

    copy = shutil.copytree(tiny_classifier, tmp_path / "model")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match="no tokenizer.json"):
        load_model(copy)
    shutil.copy(tiny_classifier / "tokenizer.json", copy / "tokenizer.json")
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(len(config["id2label"]))}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ManifestError, match="no label names"):
        load_model(copy)
    with pytest.raises(ManifestError, match="neither a bundle"):
        load_model(tmp_path)


@needs("grpc")
def test_serve_cloud_answers_with_the_classifiers_own_labels(tiny_classifier):
    """``edgekit serve-cloud MODEL_DIR`` (a real process) answers every text itself, with the labels
    and the argmax of the classifier, through the torch engine."""
    import re
    import signal
    import subprocess
    import sys

    from edgekit.runtime.client import EdgeClient
    from edgekit.runtime.model import load_model

    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve-cloud", str(tiny_classifier), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (match := re.search(r"^serving .* on [\w.\-\[\]:]*:(\d+)\s*$", line := proc.stdout.readline())):
            assert line, "serve-cloud exited: " + "".join(lines[-10:])
            lines.append(line)
        with EdgeClient(f"127.0.0.1:{match.group(1)}", timeout_s=60) as client:
            answers = client.classify(TEXTS)
            info = client.model_info()
        local = load_model(tiny_classifier)
        try:
            expected = [local.info.labels[i] for i in local.logits(TEXTS).argmax(-1)]
        finally:
            local.close()
        assert [a.label for a in answers] == expected
        assert info.format == "torch" and list(info.labels) == list(local.info.labels)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
