"""``edgekit demo``: the main job on the embedded default data set."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", default=Path("demo-output"), show_default=True, type=click.Path(path_type=Path), help="Where results go.")
def command(out: Path) -> None:
    """Run the whole pipeline on the embedded shop_intents data set (the cloud model is cached)."""
    from edgekit.deps import require

    require("torch", "transformers", "accelerate", "onnxruntime", "grpc", extra="all", what="edgekit demo")
    from edgekit.converters import quiet_third_party

    quiet_third_party()
    from edgekit.demo import run_demo

    run_demo(out, click.echo)
    click.echo("demo finished")
