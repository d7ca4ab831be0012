"""The bench's latency order: each row answers ``run_length`` calls in a row, rows rotate per run,
every text goes once through every row, and each run's first call is kept apart."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgekit.bench.suite import BenchConfig, _interleaved_latency, _Measured
from edgekit.errors import ConfigError


class _Recorder:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def logits(self, chunk):
        self.log.append((self.name, tuple(chunk)))
        return np.zeros((len(chunk), 2))


def _measured(name: str) -> _Measured:
    return _Measured(subject=SimpleNamespace(artifact=name), pred=np.zeros(0), probs=np.zeros((0, 2)))


@pytest.mark.parametrize("run_length", [1, 3, 10])
def test_runs_rotate_and_cover_every_text_once_per_row(run_length):
    log: list = []
    rows = [_measured(n) for n in ("a", "b", "c")]
    models = {r.subject.artifact: _Recorder(r.subject.artifact, log) for r in rows}
    texts = [f"t{i}" for i in range(8)]
    _interleaved_latency(rows, models, texts, threads=1, batch=1, warmup=0, run_length=run_length, bar=None)
    names = [name for name, _ in log]
    # whole runs of one row (the last run of 8 texts may be short)
    runs = []
    for name in names:
        if runs and runs[-1][0] == name and len(runs[-1]) < run_length:
            runs[-1].append(name)
        else:
            runs.append([name])
    n_runs = -(-len(texts) // run_length)
    assert len(runs) == 3 * n_runs
    # the row that opens each round of runs rotates: a, b, c, a, ...
    assert [runs[3 * k][0] for k in range(n_runs)] == [("a", "b", "c")[k % 3] for k in range(n_runs)]
    for r in rows:
        assert [chunk for name, chunk in log if name == r.subject.artifact] == [(t,) for t in texts]
        assert len(r.latency[(1, 1)]) == len(texts)
        assert len(r.after_switch[(1, 1)]) == n_runs
        # the first call of each run is one of the timed calls, in order
        assert r.after_switch[(1, 1)] == r.latency[(1, 1)][::run_length]


def test_run_length_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="--run-length"):
        BenchConfig(bundles=tmp_path, test=tmp_path / "t.jsonl", out=tmp_path, run_length=0)
