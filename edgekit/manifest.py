"""The bundle manifest: one ``manifest.json`` per bundle, the single place its metadata lives.

A bundle directory holds the model file(s), ``tokenizer.json`` and ``manifest.json``.
The runtime picks the backend, the inputs and the calibration from the manifest and
refuses a bundle whose files do not match their recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ManifestError

__all__ = [
    "Calibration",
    "MANIFEST_NAME",
    "MODEL_INPUTS",
    "Manifest",
    "SCHEMA_VERSION",
    "atomic_write_text",
    "sha256_file",
    "signature_name",
]

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Calibration:
    temperature: float = 1.0
    threshold: float = 0.0  # calibrated max-probability below which the cloud is asked

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ManifestError(f"calibration temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ManifestError(f"calibration threshold must lie in [0, 1], got {self.threshold}")


# The graph every exporter writes takes these inputs, in this order (int64 or int32 token ids and
# mask); backends read the names from the manifest, exporters write them there.
MODEL_INPUTS = ("input_ids", "attention_mask")


def signature_name(length: int) -> str:
    """The signature of a static-shape model (TFLite) that takes inputs padded to ``length``."""
    return f"seq_{length}"


@dataclass
class Manifest:
    """What a bundle is. ``files`` maps each file name in the bundle to its sha256."""

    format: str
    precision: str
    labels: list[str]
    model_files: list[str]
    max_length: int
    name: str = "edgekit-model"
    version: str = "1"
    tokenizer_file: str = "tokenizer.json"
    # Fixed sequence lengths for formats with static shapes (TFLite); empty = dynamic axes.
    buckets: list[int] = field(default_factory=list)
    inputs: list[str] = field(default_factory=lambda: list(MODEL_INPUTS))
    # How the model pools token states into the sentence vector: "mean" (masked mean, as
    # sentence-transformers encoders were trained) or "cls". The pooling is inside the exported
    # graph (every backend feeds ids + mask and reads logits); recorded so a reader knows.
    pooling: str = "cls"
    calibration: Calibration = field(default_factory=Calibration)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    # What normal traffic looks like, measured on validation at conversion
    # (edgekit.monitoring.Reference.to_dict()); the server's drift watch compares against it. {}: none.
    reference: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.calibration, dict):
            self.calibration = Calibration(**self.calibration)
        if not self.labels:
            raise ManifestError("manifest has no labels")
        if len(set(self.labels)) != len(self.labels):
            raise ManifestError("manifest labels are not unique")
        if not self.model_files:
            raise ManifestError("manifest names no model file")
        if self.max_length < 2:
            raise ManifestError(f"manifest max_length must be at least 2, got {self.max_length}")
        for name in (*self.model_files, self.tokenizer_file, *self.files):
            _check_relative(name)
        if self.reference:
            from edgekit.monitoring import Reference

            Reference.from_dict(self.reference)  # a ManifestError if it is not one

    @classmethod
    def for_model_dir(cls, model_dir: str | os.PathLike[str], max_length: int = 128) -> Manifest:
        """Describe a fine-tuned Hugging Face classifier directory (the cloud model: ``config.json``
        with label names, weights, ``tokenizer.json``) as a bundle of format ``torch``, so it loads
        through the torch engine like any bundle. Nothing is written; no checksums (the directory is
        the user's training output, not an edgekit artifact)."""
        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise ManifestError(f"{model_dir} is neither a bundle ({MANIFEST_NAME}) nor a Hugging Face model "
                                "directory (config.json)")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            id2label = {int(k): str(v) for k, v in config.get("id2label", {}).items()}
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"{config_path}: not a valid model config ({exc})") from exc
        labels = [id2label.get(i, f"LABEL_{i}") for i in range(len(id2label))]
        if not labels or any(label.startswith("LABEL_") for label in labels):
            raise ManifestError(f"{config_path} has no label names (id2label)",
                                hint="fine-tune with edgekit finetune, or set id2label in config.json")
        if not (model_dir / "tokenizer.json").is_file():
            raise ManifestError(f"{model_dir} has no tokenizer.json (a fast tokenizer)",
                                hint="save it with AutoTokenizer.from_pretrained(dir).save_pretrained(dir)")
        weights = sorted(p.name for suffix in ("*.safetensors", "*.bin") for p in model_dir.glob(suffix)
                         if p.name != "training_args.bin")
        if not weights:
            raise ManifestError(f"{model_dir} has no weights (*.safetensors or *.bin)")
        return cls(format="torch", precision="fp32", labels=labels, model_files=weights, max_length=max_length,
                   name=model_dir.name, version="torch", pooling=str(config.get("edgekit_pooling", "cls")))

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema version {version!r} is not supported (this edgekit reads {SCHEMA_VERSION})"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"manifest has unknown fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ManifestError(f"manifest is incomplete: {exc}") from exc

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike[str]) -> Manifest:
        path = Path(bundle_dir) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} is missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: expected a JSON object")
        return cls.from_dict(data)

    def save(self, bundle_dir: str | os.PathLike[str], *, checksum: bool = True) -> Path:
        """Record the sha256 of every file in the bundle (unless ``checksum=False``) and write atomically."""
        bundle_dir = Path(bundle_dir)
        if checksum:
            self.files = {
                str(p.relative_to(bundle_dir)): sha256_file(p)
                for p in sorted(bundle_dir.rglob("*"))
                if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
            }
        path = bundle_dir / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    def check_paths(self, bundle_dir: str | os.PathLike[str]) -> None:
        """Raise ManifestError if a file the manifest names resolves outside ``bundle_dir``
        (a symlink out of the bundle: a tampered bundle must not make the server read elsewhere)."""
        root = Path(bundle_dir).resolve()
        for name in (*self.model_files, self.tokenizer_file, *self.files):
            if not (Path(bundle_dir) / name).resolve().is_relative_to(root):
                raise ManifestError(f"{bundle_dir}: {name} resolves outside the bundle directory; refusing it")

    def verify(self, bundle_dir: str | os.PathLike[str]) -> None:
        """Raise ManifestError unless every recorded file exists with its recorded sha256 (and
        inside the bundle)."""
        bundle_dir = Path(bundle_dir)
        self.check_paths(bundle_dir)
        needed = {*self.model_files, self.tokenizer_file}
        missing_record = sorted(needed - set(self.files))
        if missing_record:
            raise ManifestError(f"{bundle_dir}: manifest has no checksum for {', '.join(missing_record)}")
        for name, expected in self.files.items():
            path = bundle_dir / name
            if not path.is_file():
                raise ManifestError(f"{bundle_dir}: {name} is listed in the manifest but missing")
            actual = sha256_file(path)
            if actual != expected:
                raise ManifestError(
                    f"{bundle_dir}: {name} does not match its checksum (expected {expected[:12]}…, "
                    f"got {actual[:12]}…): the bundle was modified or corrupted"
                )

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary the runtime reports (no checksums, no bulky metrics)."""
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "precision": self.precision,
            "labels": list(self.labels),
            "max_length": self.max_length,
            "buckets": list(self.buckets),
            "calibration": asdict(self.calibration),
            "metrics": {k: v for k, v in self.metrics.items() if not isinstance(v, (dict, list))},
            "target": self.target,
        }


def _check_relative(name: object) -> None:
    """A file name in a manifest: a relative path inside the bundle (no absolute path, no ``..``)."""
    if not isinstance(name, str) or not name:
        raise ManifestError(f"manifest file name {name!r} is not a non-empty string")
    path = Path(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts or "\\" in name:
        raise ManifestError(f"manifest file name {name!r} must be a relative path inside the bundle")
