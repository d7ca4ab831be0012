"""Does a text's answer depend on what it is batched with? And what does each way of batching cost?

usage: .venv/bin/python benchmarks/batch_invariance.py BUNDLE --test E.jsonl [--texts 800] [--batch 8] [--threads 1]
           [--by-length]

Under load the server's micro-batcher puts whoever is waiting into one engine call. An int8 ONNX
graph quantized dynamically takes one activation range per call (every row, every padded
position), so a text's logits moved with its batch mates; the runtime now runs such a graph one text
per call, unpadded (``Backend.rows_interact``). This prints, for the first ``--texts`` texts of the
file in random batches of ``--batch`` (seeded): how many labels differ from the text alone and the
largest logit change, for the padded batch (``rows_interact`` forced off: the runtime before issue
12's session 10) and for the batch as served now; and the texts/s of each, beside one text per call,
measured alternately in one run. ``--by-length`` batches texts of similar length together instead
(what ``edgekit convert``'s evaluation does, in batches of 64).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from edgekit.cli import run_command


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test", "test_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="Texts (JSONL/CSV with a text field).")
@click.option("--texts", "count", type=click.IntRange(min=8), default=800, show_default=True, help="Texts to use.")
@click.option("--batch", type=click.IntRange(min=2), default=8, show_default=True, help="Texts per engine call.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Engine threads.")
@click.option("--seed", type=int, default=0, show_default=True, help="The random batching.")
@click.option("--by-length", is_flag=True, help="Batch texts of similar length together (as convert evaluates).")
def main(bundle, test_file, count, batch, threads, seed, by_length) -> None:
    from edgekit.data import load_dataset
    from edgekit.runtime.model import load_bundle_model

    texts = list(load_dataset(test_file, label_field=None).texts)[:count]
    order = (sorted(range(len(texts)), key=lambda i: len(texts[i])) if by_length
             else np.random.default_rng(seed).permutation(len(texts)))
    batches = [[texts[i] for i in order[s : s + batch]] for s in range(0, len(order), batch)]
    model = load_bundle_model(bundle, threads=threads)
    try:
        served = model.backend.rows_interact

        def run(batched: bool, rows_interact: bool) -> tuple[np.ndarray, float]:
            model.backend.rows_interact = rows_interact
            start = time.perf_counter()
            if batched:
                logits = np.concatenate([model.logits(b) for b in batches])
            else:
                logits = np.concatenate([model.logits([t]) for b in batches for t in b])
            return logits, len(texts) / (time.perf_counter() - start)

        modes = {"one text per call (the reference)": (False, served), f"padded batches of {batch}": (True, False),
                 f"batches of {batch} as served": (True, served)}
        rates: dict[str, list[float]] = {name: [] for name in modes}
        logits: dict[str, np.ndarray] = {}
        for _ in range(2):  # alternately, twice: the machine's speed drifts
            for name, (batched, rows) in modes.items():
                logits[name], rate = run(batched, rows)
                rates[name].append(rate)
        model.backend.rows_interact = served
    finally:
        model.close()
    alone = logits.pop("one text per call (the reference)")
    how = "batches of similar length" if by_length else "random batches"
    click.echo(f"Bundle `{bundle}` (rows_interact: {served}), {len(texts)} texts in {how} of {batch}, "
               f"engine threads {threads}:\n")
    click.echo("| engine calls | labels that differ from the text alone | largest logit change | texts/s (two runs) |")
    click.echo("|---|---:|---:|---:|")
    click.echo(f"| one text per call (the reference) | – | – | "
               f"{' / '.join(f'{r:.0f}' for r in rates['one text per call (the reference)'])} |")
    for name, values in logits.items():
        flips = int((values.argmax(1) != alone.argmax(1)).sum())
        change = float(np.abs(values - alone).max())
        click.echo(f"| {name} | {flips} ({flips / len(texts):.1%}) | {change:.3f} | "
                   f"{' / '.join(f'{r:.0f}' for r in rates[name])} |")


if __name__ == "__main__":
    run_command(main, prog_name="batch_invariance.py")
