"""What a benchmark measures: the teacher in torch, the Optimum baseline, and edgekit bundles.

Every subject loads into a :class:`~edgekit.runtime.types.LogitModel` for a given thread
count, so the suite times them all through the same call (tokenize + infer) side by side.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ConfigError, ManifestError, MissingDependencyError
from edgekit.manifest import MANIFEST_NAME, Manifest, sha256_file

__all__ = ["Subject", "bundle_subjects", "optimum_baseline", "teacher_subject"]

log = logging.getLogger(__name__)

BASELINE_NAME = "optimum-baseline"


@dataclass
class Subject:
    artifact: str
    kind: str  # "teacher" | "optimum-baseline" | "edgekit"
    format: str
    precision: str
    path: Path
    size_bytes: int
    load: Callable[[int | None], object]  # threads -> LogitModel
    labels: list[str]
    temperature: float = 1.0
    threshold: float | None = None  # the bundle's fallback threshold (edgekit bundles only)
    backend: str = ""
    max_length: int = 0  # the bundle's token limit (0 for the teacher)


def _bundle_subject(path: Path, kind: str = "edgekit", backend: str = "auto") -> Subject:
    from edgekit.runtime.model import load_bundle_model

    manifest = Manifest.load(path)
    manifest.verify(path)
    size = sum((path / f).stat().st_size for f in manifest.model_files)
    return Subject(
        artifact=path.name,
        kind=kind,
        format=manifest.format,
        precision=manifest.precision,
        path=path,
        size_bytes=size,
        load=lambda threads: load_bundle_model(path, backend, threads, verify=False),
        labels=list(manifest.labels),
        temperature=manifest.calibration.temperature,
        threshold=manifest.calibration.threshold if kind == "edgekit" else None,
        max_length=manifest.max_length,
    )


def bundle_subjects(root: Path, backend: str = "auto") -> list[Subject]:
    """``root`` is one bundle or a directory of bundles (as ``edgekit convert --out`` writes)."""
    root = Path(root)
    if (root / MANIFEST_NAME).is_file():
        dirs = [root]
    elif root.is_dir():
        dirs = sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file() and p.name != BASELINE_NAME)
    else:
        raise ConfigError(f"{root}: no such directory")
    if not dirs:
        raise ManifestError(f"{root} holds no bundle (no */{MANIFEST_NAME}): give the --out directory of edgekit convert")
    return [_bundle_subject(d, backend=backend) for d in dirs]


def _weight_files(model_dir: Path) -> list[Path]:
    files = [p for pattern in ("*.safetensors", "*.bin") for p in model_dir.glob(pattern)]
    return sorted(p for p in files if p.name != "training_args.bin")


def _weights_size(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in _weight_files(model_dir))


def _weights_sha256(model_dir: Path) -> str:
    """The weights' sha256 (one file), or a sha256 over every weight file's (sharded or .bin teachers)."""
    files = _weight_files(model_dir) or [model_dir / "config.json"]
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(f"{p.name} {sha256_file(p)}\n" for p in files).encode()).hexdigest()


def teacher_subject(model_dir: Path, max_length: int) -> Subject:
    """The cloud model in torch fp32: loaded by the torch engine, as serve-cloud serves it."""
    from edgekit.runtime.model import load_model

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("torch", "convert", what="the teacher row (--teacher)") from exc
    labels = list(Manifest.for_model_dir(Path(model_dir), max_length).labels)

    def load(threads):
        return load_model(Path(model_dir), threads=threads, max_length=max_length)

    return Subject(
        artifact="teacher",
        kind="teacher",
        format="torch",
        precision="fp32",
        path=Path(model_dir),
        size_bytes=_weights_size(Path(model_dir)),
        load=load,
        labels=labels,
        backend="torch",
    )


def _export_teacher_onnx(model_dir: Path, out: Path, ort_class) -> str:
    """The teacher as fp32 ONNX in ``out``: by optimum's exporter where it knows the model, else torch.onnx.

    optimum's text-classification export rebuilds a Hugging Face ``*ForSequenceClassification``
    (pooling at [CLS]); an edgekit mean-pooled classifier is not one, and optimum would export a
    random head. Those go through the same torch.onnx export edgekit's own ONNX exporter uses (no
    fusions, no pruning), so the baseline still is "the teacher, quantized by optimum".
    """
    from edgekit.converters.classifier import pooling_of

    if pooling_of(model_dir) is None:
        ort_class.from_pretrained(model_dir, export=True).save_pretrained(out)
        return "optimum export (text-classification)"
    from edgekit.converters.exporters.inputs import export_inputs_for
    from edgekit.converters.exporters.onnx import export_fp32

    out.mkdir(parents=True)
    inputs = export_inputs_for(model_dir, max_length=64, buckets=(64,), calibration_texts=["where is my order"])
    export_fp32(inputs, out / "model.onnx")
    return f"torch.onnx export of the {pooling_of(model_dir)}-pooled teacher (optimum exports only [CLS] classifiers)"


def optimum_baseline(model_dir: Path, out_dir: Path, labels: list[str], max_length: int) -> Subject:
    """The teacher exported to ONNX by optimum and quantized to dynamic int8 by its ORTQuantizer.

    What a deployment engineer gets without edgekit: no distillation, no vocabulary pruning.
    Wrapped in a bundle (manifest + the teacher's tokenizer.json) so it runs through the same
    runtime code as ours. Built once into ``out_dir/optimum-baseline`` and reused while the
    teacher is unchanged.
    """
    target = Path(out_dir) / BASELINE_NAME
    teacher_hash = _weights_sha256(Path(model_dir))
    if (target / MANIFEST_NAME).is_file():
        try:
            manifest = Manifest.load(target)
            if manifest.provenance.get("teacher_sha256") == teacher_hash and manifest.max_length == max_length:
                return _bundle_subject(target, kind="optimum-baseline")
        except ManifestError:
            pass
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError as exc:
        raise MissingDependencyError("optimum", "convert", what="the Optimum baseline row") from exc
    tokenizer_json = Path(model_dir) / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ConfigError(f"{model_dir}: the teacher has no tokenizer.json (a fast tokenizer is needed)")
    arm = platform.machine().lower() in ("aarch64", "arm64")
    qconfig = (AutoQuantizationConfig.arm64 if arm else AutoQuantizationConfig.avx2)(is_static=False, per_channel=False)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{BASELINE_NAME}-") as tmp:
        tmp = Path(tmp)
        log.info("building the Optimum baseline (export + dynamic int8) from %s", model_dir)
        from edgekit.converters.classifier import pooling_of

        exported_by = _export_teacher_onnx(Path(model_dir), tmp / "fp32", ORTModelForSequenceClassification)
        ORTQuantizer.from_pretrained(tmp / "fp32").quantize(save_dir=tmp / "int8", quantization_config=qconfig)
        quantized = next((tmp / "int8").glob("*quantized*.onnx"))
        bundle = tmp / "bundle"
        bundle.mkdir()
        shutil.copy(quantized, bundle / "model.onnx")
        shutil.copy(tokenizer_json, bundle / "tokenizer.json")
        Manifest(
            format="onnx",
            precision="int8",
            labels=list(labels),
            model_files=["model.onnx"],
            max_length=max_length,
            pooling=pooling_of(Path(model_dir)) or "cls",
            name=BASELINE_NAME,
            provenance={
                "built_with": f"{exported_by}; optimum ORTQuantizer, AutoQuantizationConfig.{'arm64' if arm else 'avx2'}"
                "(is_static=False, per_channel=False)",
                "teacher": str(model_dir),
                "teacher_sha256": teacher_hash,
            },
        ).save(bundle)
        from edgekit.atomic import replace_dir

        replace_dir(bundle, target)
    return _bundle_subject(target, kind="optimum-baseline")
