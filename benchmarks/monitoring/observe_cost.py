"""What drift monitoring costs on the request path (issue 15): DriftMonitor.observe alone, and
with its Prometheus metrics (MonitorMetrics.observe), per call and per text.

usage: .venv/bin/python benchmarks/monitoring/observe_cost.py [--labels 77] [--window 1000] [--texts 60000]

Synthetic traffic (random logits, random lengths) drawn from the reference's own distribution;
the best of three runs per batch size. Run it on an idle machine for figures to quote.
"""

from __future__ import annotations

import time

import click
import numpy as np
from prometheus_client import CollectorRegistry

from edgekit.monitoring import DriftMonitor, DriftSettings, build_reference
from edgekit.runtime.monitor_metrics import register_monitor_metrics


@click.command()
@click.option("--labels", "n_labels", type=click.IntRange(min=2), default=77, show_default=True)
@click.option("--window", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--texts", "n_texts", type=click.IntRange(min=1000), default=60000, show_default=True,
              help="Texts observed per run.")
def main(n_labels: int, window: int, n_texts: int) -> None:
    rng = np.random.default_rng(0)
    labels = [f"intent_{i}" for i in range(n_labels)]
    logits = rng.normal(size=(3000, n_labels)) * 4
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    lengths = rng.integers(5, 120, len(probs)).tolist()
    reference = build_reference(probs, labels, lengths, threshold=0.6)
    confidences = probs.max(axis=1).tolist()
    predicted = [labels[j] for j in probs.argmax(axis=1)]

    def run(batch: int, with_metrics: bool) -> float:
        monitor = DriftMonitor(reference, DriftSettings(window=window))
        observe = register_monitor_metrics(CollectorRegistry(), monitor).observe if with_metrics else monitor.observe
        calls = []
        for k in range(n_texts // batch):
            i = (k * batch) % (len(probs) - batch)
            cloud = [None] * (batch - 1) + [predicted[i]]  # one text in each batch answered by the cloud
            calls.append((confidences[i:i + batch], predicted[i:i + batch], lengths[i:i + batch],
                          ["EDGE"] * (batch - 1) + ["CLOUD"], cloud))
        start = time.perf_counter()
        for args in calls:
            observe(*args)
        return (time.perf_counter() - start) / len(calls) * 1e6

    click.echo(f"{n_labels} labels, window {window}, verdict every {DriftSettings(window=window).check_every} texts")
    for with_metrics in (False, True):
        for batch in (1, 8, 32):
            us = min(run(batch, with_metrics) for _ in range(3))
            what = "MonitorMetrics.observe" if with_metrics else "DriftMonitor.observe  "
            click.echo(f"{what} batch {batch:2d}: {us:7.2f} us per call, {us / batch:5.2f} us per text")


if __name__ == "__main__":
    main()
