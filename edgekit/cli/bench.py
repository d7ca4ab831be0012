"""``edgekit bench``: every bundle side by side with the teacher and the Optimum baseline."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli._options import data_field_options, engine_choice

_P = click.Path(path_type=Path)


def _ints(value: str, option: str) -> tuple[int, ...]:
    from edgekit.errors import ConfigError

    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, e.g. 1,2; got {value!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} takes positive integers, e.g. 1,2; got {value!r}")
    return values


@click.command("bench")
@click.argument("bundles", type=_P)
@click.option("--test", required=True, type=_P, help="Labelled test data (.jsonl or .csv).")
@click.option("--out", required=True, type=_P, help="Directory for results.json, results.md and the plots.")
@click.option("--teacher", type=_P, help="The fine-tuned cloud model directory: adds the teacher and Optimum baseline rows.")
@click.option("--reference", type=_P, help="reference.json of an earlier run with --teacher (the teacher's answers), "
              "for agreement and cascade columns where torch is not installed (a Pi).")
@click.option("--no-baseline", is_flag=True, help="Leave out the Optimum baseline row.")
@click.option("--threads", default="1", show_default=True, help="Comma-separated inference thread counts.")
@click.option("--batch", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--latency-texts", default=200, show_default=True, type=click.IntRange(1),
              help="Test texts timed per batch size and thread count.")
@click.option("--run-length", default=10, show_default=True, type=click.IntRange(1),
              help="Calls in a row per row before the next takes over (1: every call follows another row, "
              "caches cold). The first call of each run is also reported apart ('p50 after switch').")
@click.option("--backend", type=engine_choice(), default="auto",
              show_default=True, help="Engine for the bundles (auto: from each manifest).")
@click.option("--no-probe", is_flag=True, help="Skip cold start and peak memory (one fresh process per artifact).")
@data_field_options
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def command(bundles: Path, test: Path, out: Path, teacher: Path | None, reference: Path | None, no_baseline: bool,
            threads: str, batch: str, latency_texts: int, run_length: int, backend: str, no_probe: bool, text_field: str,
            label_field: str, no_progress: bool) -> None:
    """Benchmark BUNDLES (one bundle or an `edgekit convert --out` directory) on the test set."""
    from edgekit.bench.report import drop_words, write_results
    from edgekit.bench.suite import BenchConfig, run_bench

    if teacher is not None:
        from edgekit.deps import require

        require("torch", "transformers", extra="convert", what="the teacher row of edgekit bench")
        from edgekit.converters import quiet_third_party

        quiet_third_party()
    config = BenchConfig(
        bundles=bundles, test=test, out=out, teacher=teacher, reference=reference, baseline=not no_baseline,
        threads=_ints(threads, "--threads"), batch=_ints(batch, "--batch"), latency_texts=latency_texts,
        run_length=run_length, probe=not no_probe, backend=backend, text_field=text_field, label_field=label_field,
        progress=not no_progress,
    )
    result = run_bench(config, echo=click.echo)
    verdict = write_results(result, out)
    # the setting of the targets' verdict: the smallest thread count and batch
    rows = [r for r in result["rows"] if r["threads"] == min(config.threads) and r["batch"] == min(config.batch)]
    for r in rows:
        cascade = "" if r.get("cascade_accuracy") is None else (
            f"  cascade {r['cascade_accuracy']:.4f} at {r['cloud_rate'] * 100:.1f}% cloud")
        click.echo(f"  {r['artifact']:<22} {r['size_bytes'] / 1e6:7.1f} MB  accuracy {r['accuracy']:.4f}  "
                   f"p50 {r['latency_ms_p50']:7.2f} ms (after a switch {r['latency_ms_p50_after_switch']:7.2f}){cascade}")
    if verdict is not None:
        click.echo(f"best edge bundle {verdict['best']}: {verdict['speedup_vs_teacher']:.1f}x faster than the teacher"
                   + (f", {verdict['speedup_vs_baseline']:.1f}x faster than the Optimum baseline"
                      if verdict.get("speedup_vs_baseline") is not None else "")
                   + f", 1/{1 / verdict['size_fraction_of_teacher']:.0f} of its size, "
                   f"{drop_words(verdict['accuracy_drop_points'])} it")
    click.echo(f"results written to {out / 'results.md'} and {out / 'results.json'}")
