"""``edgekit convert``: distil, quantize, export, gate and calibrate; write bundles and a report."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli._options import data_field_options

_P = click.Path(path_type=Path)


def _variants(values: tuple[str, ...]) -> dict[str, list[str]] | None:
    from edgekit.errors import ConfigError

    out: dict[str, list[str]] = {}
    for value in values:
        fmt, sep, variant = value.partition(":")
        if not sep or not variant:
            raise ConfigError(f"--variant takes FORMAT:VARIANT (e.g. onnx:int8-dynamic), got {value!r}")
        out.setdefault(fmt.strip(), []).append(variant.strip())
    return out or None


@click.command("convert")
@click.argument("model_dir", required=False, type=_P)
@click.option("--train", type=_P, help="Training data (the transfer set for distillation).")
@click.option("--validation", type=_P, help="Validation data (early stopping, calibration, threshold).")
@click.option("--test", type=_P, help="Held-out test data (the accuracy gate and the report).")
@click.option("--targets", help="Comma-separated formats: onnx,openvino,tflite (default: all).")
@click.option("--out", type=_P, help="Output directory for the bundles and the report.")
@click.option("--config", "config_file", type=_P, help="YAML file with any of these options (the command line wins).")
@click.option("--variant", "variants", multiple=True, help="Only try FORMAT:VARIANT (repeatable), e.g. onnx:int8-dynamic.")
@click.option("--unlabeled", type=_P, help="Extra unlabelled texts for the transfer set.")
@click.option("--student", type=_P, help="The student's start: auto (default: probe paraphrase-minilm-l3 (3 layers), "
              "minilm-l6 (6) and a small teacher's layers; keep the smallest within 1 point of the best probe), "
              "teacher-layers, a packaged name or a directory.")
@click.option("--student-layers", type=click.IntRange(1), help="Layers the student keeps (auto: each start whole, or "
              "N layers of each; teacher-layers: half; --student PATH: all).")
@click.option("--prune-vocab/--no-prune-vocab", default=None,
              help="Prune the vocabulary to the transfer set's tokens (default: when it changes < 1% of the "
                   "answers on validation, which it has not seen).")
@click.option("--augment/--no-augment", default=None, help="Add perturbed copies of the training texts (default on).")
@click.option("--epochs", type=click.IntRange(1), help="Distillation epochs (default: enough for 1,500 steps, 3..20; early stopping).")
@click.option("--batch-size", type=click.IntRange(1))
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), help="Encoder learning rate (default 1e-4).")
@click.option("--head-lr", "head_learning_rate", type=click.FloatRange(min=0, min_open=True), help="Head learning rate (default 5x --lr).")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), help="KD temperature (default 1).")
@click.option("--alpha", type=click.FloatRange(0, 1), help="Weight of the KD term against label cross-entropy (default 0.5).")
@click.option("--calibrate-teacher/--no-calibrate-teacher", default=None, help="Scale the teacher's logits by its validation temperature (default on).")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "auto"]),
              help="Distil under bf16 autocast: auto (default) where the CPU/GPU multiplies bf16 in hardware "
                   "(AVX-512 BF16, AMX, recent GPUs), no elsewhere.")
@click.option("--teacher-cache/--no-teacher-cache", default=None, help="Reuse the teacher's outputs cached on disk (default on).")
@click.option("--max-length", type=click.IntRange(8, 512), help="Max tokens (default: from the data).")
@click.option("--buckets", help="Comma-separated TFLite sequence lengths (default: from the data).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), help="Allowed drop below the teacher, in points (default 1.0).")
@click.option("--allow-accuracy-drop", is_flag=True, default=None, help="Write artifacts that fail the gate anyway.")
@click.option("--max-cloud-rate", type=click.FloatRange(0, 1), help="Threshold rule: best cascade within this cloud rate.")
@click.option("--seed", type=int)
@click.option("--feedback", type=_P, metavar="DIR",
              help="Records of what the cloud answered (edgekit serve --record DIR): the texts join the transfer "
                   "set with the cloud's answers as soft targets (deduplicated; training, validation and test texts "
                   "left out), and the report compares the new bundles with --feedback-baseline on them.")
@click.option("--feedback-weight", type=click.FloatRange(min=0, min_open=True),
              help="[feedback] Times each recorded text counts in the transfer set per epoch (default 1; "
                   "a fraction: a seeded share of them once more).")
@click.option("--feedback-baseline", type=_P, metavar="BUNDLE_DIR",
              help="[feedback] The bundle in service that made the records: compared with the new bundles on the "
                   "recorded texts and the test split.")
@data_field_options
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def command(model_dir, config_file, variants, no_progress, text_field, label_field, feedback, feedback_weight,
            feedback_baseline, **options) -> None:
    """Convert the fine-tuned MODEL_DIR into gated, calibrated edge bundles."""
    from edgekit.config import ConvertConfig

    overrides = {k: v for k, v in options.items() if v is not None}
    overrides.update(model_dir=model_dir, variants=_variants(variants), feedback=feedback,
                     feedback_weight=feedback_weight, feedback_baseline=feedback_baseline)
    if text_field != "text":
        overrides["text_field"] = text_field
    if label_field != "label":
        overrides["label_field"] = label_field
    if no_progress:
        overrides["progress"] = False
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        config = ConvertConfig.from_yaml(config_file, overrides)
    else:
        config = ConvertConfig.from_mapping(overrides, source="command line")

    from edgekit.converters import quiet_third_party

    quiet_third_party()
    from edgekit.converters.pipeline import convert

    result = convert(config, echo=click.echo)
    click.echo(f"wrote {len(result.bundles)} bundle(s) to {result.out}: "
               + ", ".join(p.name for p in result.bundles) + "; report: " + str(result.out / "report.md"))
