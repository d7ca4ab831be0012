"""Labelled text data from JSONL or CSV files, with errors that name the file and line.

Every problem a user can put in a data file (an empty file, a missing field, a label
the training set never saw, bytes that are not UTF-8) is reported as one line:
``<file>:<line>: <what>``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import DataError

__all__ = ["Dataset", "check_labels", "label_ids", "load_dataset", "load_splits"]

_FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class Dataset:
    texts: tuple[str, ...]
    labels: tuple[str, ...]  # empty for unlabelled data
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def label_set(self) -> list[str]:
        return sorted(set(self.labels))

    def label_counts(self) -> Counter[str]:
        return Counter(self.labels)

    def fingerprint(self) -> str:
        """sha256 over the texts and labels, for provenance records."""
        digest = hashlib.sha256()
        for i, text in enumerate(self.texts):
            digest.update(text.encode("utf-8") + b"\x00")
            if self.labels:
                digest.update(self.labels[i].encode("utf-8"))
            digest.update(b"\x01")
        return digest.hexdigest()


def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in _FORMATS:
            raise DataError(f"{path}: unknown data format {fmt!r} (use one of: {', '.join(_FORMATS)})")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in ("csv", "tsv"):
        return "csv"
    raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; name it .jsonl or .csv")


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid UTF-8 (byte {exc.start}: {line[exc.start:exc.start + 1]!r})") from exc
    return out


def _field(record: dict, name: str, path: Path, number: int, *, kind: str) -> str:
    if record.get(name) is None:  # absent key, or a CSV row with too few columns
        raise DataError(f"{path}:{number}: missing {kind} field {name!r} (fields: {', '.join(map(str, record)) or 'none'})")
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path}:{number}: {kind} field {name!r} must be a string, got {type(value).__name__}")
    value = str(value)
    if kind == "text" and not value.strip():
        raise DataError(f"{path}:{number}: text field {name!r} is empty")
    if kind == "label" and not value.strip():
        raise DataError(f"{path}:{number}: label field {name!r} is empty")
    return value.strip() if kind == "label" else value


def _records_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _records_csv(path: Path) -> Iterable[tuple[int, dict]]:
    lines = _read_lines(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    try:
        for record in reader:
            # DictReader's line_num counts physical lines read, i.e. this record's last line.
            yield reader.line_num, record
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from exc


def load_dataset(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    label_field: str | None = "label",
    fmt: str | None = None,
) -> Dataset:
    """Read a JSONL or CSV file. ``label_field=None`` reads unlabelled texts."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    fmt = _detect_format(path, fmt)
    records = _records_jsonl(path) if fmt == "jsonl" else _records_csv(path)
    texts: list[str] = []
    labels: list[str] = []
    for number, record in records:
        texts.append(_field(record, text_field, path, number, kind="text"))
        if label_field is not None:
            labels.append(_field(record, label_field, path, number, kind="label"))
    if not texts:
        raise DataError(f"{path}:1: the file holds no examples")
    return Dataset(tuple(texts), tuple(labels), str(path))


def check_labels(train_labels: Sequence[str], other: Dataset, *, split: str) -> None:
    """Raise DataError naming the first line of ``other`` whose label training never saw."""
    known = set(train_labels)
    for index, label in enumerate(other.labels):
        if label not in known:
            line = _line_of(other, index)
            raise DataError(
                f"{other.source}:{line}: label {label!r} in the {split} set does not occur in the training set"
            )


def _line_of(dataset: Dataset, index: int) -> int:
    """Line number of the index-th record (records skip blank lines in JSONL)."""
    path = Path(dataset.source)
    if _detect_format(path, None) == "jsonl":
        seen = -1
        for number, line in enumerate(_read_lines(path), start=1):
            if line.strip():
                seen += 1
                if seen == index:
                    return number
    else:
        lines = _read_lines(path)
        reader = csv.DictReader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for i, _ in enumerate(reader):
            if i == index:
                return reader.line_num
    return index + 1


def load_splits(
    train: str | os.PathLike[str],
    validation: str | os.PathLike[str],
    test: str | os.PathLike[str] | None = None,
    *,
    text_field: str = "text",
    label_field: str = "label",
) -> tuple[Dataset, Dataset, Dataset | None]:
    """Load train/validation(/test) and check every label there occurs in training."""
    kw = {"text_field": text_field, "label_field": label_field}
    train_ds = load_dataset(train, **kw)
    if len(train_ds.label_set) < 2:
        raise DataError(f"{train}:1: the training set needs at least two labels, found {train_ds.label_set}")
    val_ds = load_dataset(validation, **kw)
    check_labels(train_ds.labels, val_ds, split="validation")
    test_ds = None
    if test is not None:
        test_ds = load_dataset(test, **kw)
        check_labels(train_ds.labels, test_ds, split="test")
    return train_ds, val_ds, test_ds


def label_ids(values: Sequence[str], labels: Sequence[str], *, where: str, whose: str = "the model's",
              error: type[Exception] = DataError):
    """Label names → their index in ``labels`` (a numpy int array); unknown names raise ``error`` naming ``where``.

    The one label → id mapping of edgekit (finetune, convert, bench).
    """
    import numpy as np

    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise error(
            f"{where}: labels {', '.join(map(repr, unknown[:5]))} are not among {whose} labels "
            f"({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})"
        )
    return np.array([index[value] for value in values], dtype=np.int64)
