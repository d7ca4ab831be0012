"""The pieces of issue 10's distillation, each on its own: batches, the teacher cache, probes, starts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import needs

pytestmark = needs("torch", "transformers", "accelerate")


def test_length_buckets_cover_every_text_once_per_epoch_and_shorten_batches():
    from edgekit.converters.training.loop import LengthBucketSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=1000).tolist()
    sampler = LengthBucketSampler(lengths, batch_size=32, seed=1, chunk_batches=10)
    epochs = [list(sampler) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 32  # ceil(1000 / 32)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1000))  # every text exactly once
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        shuffled = rng.permutation(1000).tolist()
        random_padded = sum(len(shuffled[k : k + 32]) * max(lengths[i] for i in shuffled[k : k + 32])
                            for k in range(0, 1000, 32))
        assert padded < 0.8 * random_padded  # sorting within chunks cuts the padding
    assert epochs[0] != epochs[1]  # a new order every epoch


def test_epochs_for_gives_small_data_more_passes():
    from edgekit.converters.training.loop import epochs_for

    assert epochs_for(9003, 32, min_steps=1500) == 6
    assert epochs_for(1500, 32, min_steps=1500, max_epochs=20) == 20
    assert epochs_for(100_000, 32, min_steps=1500) == 3


def test_teacher_cache_key_changes_with_weights_data_and_length():
    from edgekit.converters.training.teacher_cache import teacher_cache_key

    base = teacher_cache_key({"model.safetensors": "aa"}, ["a", "b"], 64, pooled=False)
    assert base == teacher_cache_key({"model.safetensors": "aa"}, ["a", "b"], 64, pooled=False)
    assert base != teacher_cache_key({"model.safetensors": "ab"}, ["a", "b"], 64, pooled=False)
    assert base != teacher_cache_key({"model.safetensors": "aa"}, ["a", "c"], 64, pooled=False)
    assert base != teacher_cache_key({"model.safetensors": "aa"}, ["b", "a"], 64, pooled=False)
    assert base != teacher_cache_key({"model.safetensors": "aa"}, ["a", "b"], 32, pooled=False)
    assert base != teacher_cache_key({"model.safetensors": "aa"}, ["a", "b"], 64, pooled=True)
    assert base != teacher_cache_key({"model.safetensors": "aa", "edgekit_head.safetensors": "x"}, ["a", "b"], 64,
                                     pooled=False)


def test_teacher_outputs_are_read_back_from_the_cache(tiny_classifier, small_splits):
    from edgekit.converters.evaluate import load_classifier_dir
    from edgekit.converters.training.teacher_cache import teacher_outputs
    from edgekit.data import load_dataset

    model, tok, _ = load_classifier_dir(tiny_classifier)
    texts = list(load_dataset(small_splits["validation"]).texts)
    sha = {"model.safetensors": "test-teacher-outputs"}
    first = teacher_outputs(model, tok, texts, max_length=32, weights_sha256=sha, pooled=True)
    second = teacher_outputs(model, tok, texts, max_length=32, weights_sha256=sha, pooled=True)
    assert not first.cached and second.cached
    np.testing.assert_array_equal(first.logits, second.logits)
    np.testing.assert_array_equal(first.pooled, second.pooled)
    # the sorted-by-length scoring returns rows in the texts' order
    from edgekit.converters.training.loop import predict_logits

    np.testing.assert_allclose(first.logits, predict_logits(model, tok, texts, max_length=32), atol=1e-5)


def test_linear_probe_separates_and_warm_starts_the_head():
    import torch

    from edgekit.converters.training.probe import fit_probe

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 3
    y = rng.integers(0, 4, size=400)
    x = (centers[y] + rng.normal(size=(400, 16)) + 50).astype(np.float32)  # far from the origin: standardised
    probe = fit_probe(x, y, 4)
    assert probe.accuracy(x, y) > 0.95
    head = probe.to_linear()
    with torch.no_grad():
        np.testing.assert_allclose(head(torch.from_numpy(x)).numpy(), probe.logits(x), rtol=1e-4, atol=1e-3)
    softer = fit_probe(x, y, 4, scale=0.5)
    np.testing.assert_allclose(softer.weight, probe.weight * 0.5, rtol=1e-4, atol=1e-6)


def test_a_near_constant_feature_does_not_get_a_huge_weight():
    """Pooled sentence embeddings have near-constant dimensions; per-feature standardisation gave
    them weights of 3e4 (all-mpnet-base-v2 on banking77), which int8 per-tensor quantization of
    the head turned into one constant answer. Checked to fail with per-feature standardisation
    (the rogue dimension's weight is then far above 1)."""
    from edgekit.converters.training.probe import fit_probe

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    y = rng.integers(0, 4, size=400)
    x = (centers[y] + rng.normal(size=(400, 16)) * 0.5).astype(np.float32)
    x[:, 0] = 3.0 + rng.normal(size=400) * 1e-4  # a rogue dimension: large, nearly constant, pure noise
    probe = fit_probe(x, y, 4)
    assert probe.accuracy(x, y) > 0.9
    weights = np.abs(probe.weight)
    assert weights.max() < 10 * np.percentile(weights, 99)
    assert weights[:, 0].max() < 1.0


def test_choose_start_keeps_the_best_probe_and_warms_its_head(tiny_classifier, small_splits):
    """A trained encoder beats a random one as a start, and the chosen start's head is its probe."""
    from transformers import AutoTokenizer, BertModel

    from edgekit.converters.classifier import PooledClassifier, load_classifier
    from edgekit.converters.training.distill import Candidate, choose_start
    from edgekit.converters.evaluate import label_ids
    from edgekit.data import load_dataset

    trained = load_classifier(tiny_classifier)
    labels = trained.labels
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    random_encoder = BertModel(trained.encoder.config)
    cands = [
        Candidate("random", PooledClassifier(random_encoder, labels, "mean"), tok, None, 1),
        Candidate("trained", PooledClassifier(trained.encoder, labels, "mean"), tok, None, 2),
    ]
    train = load_dataset(small_splits["train"])
    val = load_dataset(small_splits["validation"])
    y_train, y_val = label_ids(train, labels), label_ids(val, labels)
    start = choose_start(cands, train.texts, y_train, val.texts, y_val, max_length=32, echo=lambda s: None)
    assert start.chosen.name == "trained"
    assert [p["name"] for p in start.probed] == ["random", "trained"]
    assert start.probed[1]["probe_validation_accuracy"] > start.probed[0]["probe_validation_accuracy"]
    from edgekit.converters.training.loop import predict_logits

    acc = float((predict_logits(start.chosen.model, tok, val.texts, max_length=32).argmax(-1) == y_val).mean())
    assert acc == pytest.approx(start.chosen.probe_accuracy, abs=1e-6)  # the head *is* the probe


def test_slice_encoder_keeps_evenly_spaced_layers():
    import torch
    from transformers import BertConfig, BertModel

    from edgekit.converters.training.distill import slice_encoder

    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                                   intermediate_size=32))
    sliced, kept = slice_encoder(encoder, 3)
    assert kept == [0, 2, 4] and sliced.config.num_hidden_layers == 3
    torch.testing.assert_close(sliced.encoder.layer[1].output.dense.weight, encoder.encoder.layer[2].output.dense.weight)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_training_learns_in_fp32_and_under_bf16_autocast(precision):
    """bf16 autocast (--mixed-precision) must still learn, and leave fp32 weights behind."""
    import torch

    from edgekit.converters.training.loop import TrainConfig, train

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def collate(rows):
        idx = torch.tensor(rows)
        return {"x": torch.from_numpy(x)[idx], "y": torch.from_numpy(y)[idx]}

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch["x"]).float(), batch["y"])

    def evaluate(m):
        with torch.no_grad():
            return float((m(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())

    config = TrainConfig(epochs=20, batch_size=32, learning_rate=3e-2, patience=20, progress=False,
                         mixed_precision=precision)
    result = train(model, list(range(len(x))), collate, loss_fn, evaluate, config)
    assert result.best_score > 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_bigger_start_must_probe_more_than_a_point_better():
    from edgekit.converters.training.distill import Candidate, pick_start

    def cand(name, params, acc):
        c = Candidate(name, None, None, None, params)
        c.probe_accuracy = acc
        return c

    small, big = cand("l3", 17, 0.906), cand("l6", 22, 0.919)
    chosen, reason = pick_start([small, big])
    assert chosen is big and "smaller starts probed more than 1 point lower" in reason
    small.probe_accuracy = 0.912  # within a point: the cheaper start wins
    chosen, reason = pick_start([small, big])
    assert chosen is small and "within 1 point of the best (0.9190)" in reason
    assert pick_start([big])[1] == "the only start asked for"


def test_early_stopping_waits_for_training_not_for_the_warm_start():
    """A probe-headed start competes for the final pick, but patience counts trained epochs against
    the best trained epoch: the dip while the learning rate peaks does not stop training."""
    import torch

    from edgekit.converters.training.loop import _Best

    model = torch.nn.Linear(2, 2)
    best = _Best()
    for epoch, score in enumerate((0.883, 0.857, 0.869, 0.879)):  # banking77 from 1,804 texts
        best.offer(model, epoch, score)
    assert (best.epoch, best.score, best.stale) == (0, 0.883, 0)  # the start leads; training still improves
    for epoch, score in ((4, 0.891), (5, 0.889), (6, 0.887)):
        best.offer(model, epoch, score)
    assert (best.epoch, best.score, best.stale) == (4, 0.891, 2)
    best.offer(model, 7, 0.85)
    assert best.stale == 3 and best.epoch == 4
