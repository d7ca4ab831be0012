"""A text gets the same answer alone or batched with others (issue 12, session 10): under load the
micro-batcher puts whoever waits into one engine call, and a dynamically quantized int8 ONNX graph
takes one activation range per call, so the runtime runs such a graph one text per call, unpadded."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.conftest import REPO, needs

pytestmark = needs("torch", "transformers", "onnxruntime", "onnx", "openvino", "nncf", "litert_torch", "ai_edge_litert")
# the session fixture `converted` (tests/conftest.py) converts the tiny classifier to all formats once


def test_a_text_gets_the_same_answer_whatever_it_is_batched_with(converted, small_splits, monkeypatch):
    """A dynamically quantized int8 graph takes one activation range per call: the runtime runs it
    one text per call, unpadded, so a text's logits do not depend on its batch mates or their
    lengths (under load the micro-batcher groups whoever is waiting). Checked to fail: with
    ``rows_interact`` forced False the batched logits of the int8 bundle differ."""
    from edgekit.data import load_dataset
    from edgekit.runtime.model import load_bundle_model

    texts = [*list(load_dataset(small_splits["test"]).texts)[:24], "a much longer text than the others, to pad every row"]
    by_name = {b.name: b for b in converted.bundles}
    int8, fp32 = load_bundle_model(by_name["onnx-int8"]), load_bundle_model(by_name["onnx-fp32"])
    try:
        assert int8.backend.rows_interact and not fp32.backend.rows_interact
        alone = {t: int8.logits([t])[0] for t in texts}
        for batch in (texts, texts[::-1], [*texts[:3], texts[-1]]):
            np.testing.assert_array_equal(int8.logits(batch), np.stack([alone[t] for t in batch]))
        monkeypatch.setattr(int8, "_one_per_call", False)  # the padded batch, as before
        assert not np.array_equal(int8.logits(texts), np.stack([alone[t] for t in texts]))
    finally:
        int8.close()
        fp32.close()


def test_callers_encodings_run_together_give_the_answers_of_one_call(converted, small_splits):
    """The server's batcher tokenizes each request in its caller's thread (``encode``) and runs the
    concatenated rows of several callers in one engine call (``run_encoded``): for every format
    that is the answer ``logits`` gives for all their texts at once (padded to the batch's longest
    text, or to a bucket, or one text per call)."""
    from edgekit.data import load_dataset
    from edgekit.runtime.model import load_bundle_model

    texts = list(load_dataset(small_splits["test"]).texts)[:9]
    callers = [texts[:1], texts[1:5], texts[5:]]
    for bundle in converted.bundles:
        model = load_bundle_model(bundle)
        try:
            rows = [row for part in callers for row in model.encode(part)]
            assert len(rows) == len(texts)
            np.testing.assert_allclose(model.run_encoded(rows), model.logits(texts), rtol=0, atol=1e-5,
                                       err_msg=bundle.name)
        finally:
            model.close()


def test_the_batch_invariance_script_shows_no_change_as_served(converted, small_splits):
    bundle = next(b for b in converted.bundles if b.name == "onnx-int8")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "batch_invariance.py"), str(bundle),
                           "--test", str(small_splits["test"]), "--texts", "24", "--batch", "4"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(rows_interact: True), 24 texts in random batches of 4" in done.stdout
    assert "| batches of 4 as served | 0 (0.0%) | 0.000 |" in done.stdout
    assert "| padded batches of 4 |" in done.stdout and "| one text per call (the reference) | – | – |" in done.stdout
