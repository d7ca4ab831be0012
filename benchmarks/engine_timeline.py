"""How busy the model is inside ``edgekit serve`` under load, and where the idle time goes.

    python benchmarks/engine_timeline.py BUNDLE --test E.jsonl [--clients 16] [--seconds 10]
        [--python OTHER/bin/python] [--serve-arg=--engine-cpus=1 ...]

Starts ``edgekit serve BUNDLE --threads 1`` (from ``--python``'s install: an older commit's venv
works too) with ``benchmarks/engine_timeline/sitecustomize.py`` loaded, drives it with N grpc.aio
clients in this process for the given seconds, stops it, and prints, over the middle of the run:
the share of time the batcher's model calls took (and how many ran on the engine thread or in a
caller's thread), the batch sizes, the gaps between two calls, and ONNX Runtime's ``run`` time per
call (one text per call for dynamically quantized int8 bundles) with its own busy share. Issue 12's
profile (RESULTS.md, session 11) came from this.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

from edgekit.cli import run_command


def _summary(calls: list, runs: list, trim_head: float = 2.0, trim_tail: float = 1.0) -> list[str]:
    calls = sorted(calls)
    t0, t1 = calls[0][0], calls[-1][1]
    calls = [c for c in calls if t0 + trim_head < c[0] < t1 - trim_tail]
    if len(calls) < 2:
        return ["too few model calls in the middle of the run"]
    span = calls[-1][1] - calls[0][0]
    busy = sum(end - start for start, end, _, _ in calls)
    gaps = np.asarray([(b[0] - a[1]) * 1000 for a, b in zip(calls, calls[1:])])
    where = Counter("engine thread" if name.startswith("edgekit-batcher") else "caller's thread" for *_, name in calls)
    sizes = Counter(size for _, _, size, _ in calls)
    lines = [f"model calls: {len(calls)} in {span:.2f} s, {sum(s for _, _, s, _ in calls)} texts; busy {busy / span:.1%}; "
             + ", ".join(f"{n} on the {w}" for w, n in where.items()),
             "batch sizes: " + ", ".join(f"{size}: {n}" for size, n in sorted(sizes.items())),
             f"gaps between calls, ms: p10 {np.percentile(gaps, 10):.3f}, p50 {np.percentile(gaps, 50):.3f}, "
             f"p90 {np.percentile(gaps, 90):.3f}, p99 {np.percentile(gaps, 99):.3f}; {gaps.sum() / 1000 / span:.1%} of the time"]
    runs = sorted(r for r in runs if calls[0][0] <= r[0] <= calls[-1][1])
    if runs:
        took = np.asarray([(end - start) * 1000 for start, end in runs])
        lines.append(f"onnxruntime run, ms: p50 {np.percentile(took, 50):.3f}, mean {took.mean():.3f} over {len(runs)} "
                     f"runs; busy {took.sum() / 1000 / span:.1%}")
    return lines


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test", "test_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="Texts to send (JSONL/CSV with a text field).")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=4), default=10.0, show_default=True)
@click.option("--python", "python", type=click.Path(exists=True, dir_okay=False), default=sys.executable,
              help="The Python whose edgekit serves (default: this one).")
@click.option("--serve-arg", "serve_args", multiple=True, help="One more `edgekit serve` argument (repeatable).")
def main(bundle, test_file, clients, seconds, python, serve_args) -> None:
    from edgekit.bench.overhead import _aio_load, _request_bytes
    from edgekit.bench.servers import ServerProcess
    from edgekit.data import load_dataset

    payloads = [_request_bytes(t) for t in load_dataset(test_file, label_field=None).texts]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timeline.json"
        env = {**os.environ, "EDGEKIT_TIMELINE": str(out),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).with_name("engine_timeline")),
                                                           os.environ.get("PYTHONPATH")]))}
        argv = [python, "-m", "edgekit", "serve", str(bundle), "--port", "0", "--threads", "1", *serve_args]
        with ServerProcess(argv, name="timeline", env=env) as server:
            latencies, errors, elapsed = asyncio.run(_aio_load(server.address, payloads, clients, seconds))
            time.sleep(1.5)  # the server writes its timeline every second
            data = json.loads(out.read_text())
    click.echo(f"{clients} clients, {seconds:g} s: {len(latencies) / elapsed:.1f} requests/s, {errors} errors")
    for line in _summary(data["calls"], data["runs"]):
        click.echo(line)


if __name__ == "__main__":
    run_command(main, prog_name="engine_timeline.py")
