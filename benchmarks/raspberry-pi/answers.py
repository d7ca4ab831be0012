"""Answer a test set with every bundle in a directory and write labels + calibrated scores to JSON.

    python answers.py BUNDLES_DIR TEST.jsonl OUT.json [--limit N] [--threads 1] [--emulated]

BUNDLES_DIR holds one subdirectory per bundle (a folder with a manifest.json; BUNDLES_DIR may also
be a bundle itself). Each bundle is loaded with its checksums verified, the test texts go through
it in batches of 32, and for each text we keep the predicted label and the calibrated max
probability, softmax(logits / manifest temperature): the score the cascade compares with its
threshold. Run it on x86 and on the Pi (or under emulation) and compare the two files with
compare.py.

Needs only the ``runtime`` extra (numpy, the engines, tokenizers; no torch). ``seconds`` per artifact
is the wall time of answering on this machine; with --emulated (set by emulated_check.sh) the file
says so, and such a time says nothing about a Pi.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.data import load_dataset
from edgekit.device import device_record, library_versions
from edgekit.errors import EdgekitError
from edgekit.manifest import MANIFEST_NAME, sha256_file
from edgekit.metrics import softmax
from edgekit.runtime.model import load_bundle_model

BATCH = 32


def find_bundles(root: Path) -> list[Path]:
    if (root / MANIFEST_NAME).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())


def texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    return digest.hexdigest()


def answer(bundle: Path, texts: list[str], gold: list[str], threads: int | None) -> dict:
    started = time.perf_counter()
    model = load_bundle_model(bundle, threads=threads)
    try:
        manifest = model.manifest
        labels_out: list[str] = []
        scores_out: list[float] = []
        for start in range(0, len(texts), BATCH):
            logits = model.logits(texts[start : start + BATCH])
            probs = softmax(logits, manifest.calibration.temperature)
            labels_out += [manifest.labels[i] for i in probs.argmax(axis=-1)]
            scores_out += [float(p) for p in probs.max(axis=-1)]
        record = {
            "format": manifest.format,
            "precision": manifest.precision,
            "backend": model.backend_name,
            "manifest_sha256": sha256_file(bundle / MANIFEST_NAME),
            "temperature": manifest.calibration.temperature,
            "labels": labels_out,
            "scores": scores_out,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if gold and set(gold) <= set(manifest.labels):  # only when the test set speaks the model's labels
            record["accuracy"] = float(np.mean([a == b for a, b in zip(labels_out, gold)]))
        return record
    finally:
        model.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", type=Path, help="a directory of bundles (or one bundle)")
    parser.add_argument("test", type=Path, help="JSONL/CSV with a 'text' field ('label' optional)")
    parser.add_argument("out", type=Path, help="where to write the answers (JSON)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N texts")
    parser.add_argument("--threads", type=int, default=1, help="engine threads (default 1; 0 = the engine's default)")
    parser.add_argument("--emulated", action="store_true", help="mark the run (and its times) as emulated")
    args = parser.parse_args(argv)

    try:
        try:
            data = load_dataset(args.test)
        except EdgekitError:  # unlabelled texts are fine: labels are only used for an accuracy figure
            data = load_dataset(args.test, label_field=None)
        texts, gold = list(data.texts), list(data.labels)
        if args.limit is not None:
            texts, gold = texts[: args.limit], gold[: args.limit]
        bundles = find_bundles(args.bundles)
        if not bundles:
            print(f"Error: no bundle (a folder with {MANIFEST_NAME}) in {args.bundles}", file=sys.stderr)
            return 2
        device = device_record()
        if args.emulated:
            device["emulated"] = f"qemu-user, QEMU_CPU={os.environ.get('QEMU_CPU', '?')}"
        result = {
            "device": device,
            "libraries": library_versions(),
            "emulated": bool(args.emulated),
            "timing_note": (
                "EMULATED (qemu-user): seconds are 10-250x slower than a real device; not a Pi timing"
                if args.emulated
                else "wall time on this machine, including bundle load; use `edgekit bench` for latency"
            ),
            "test": str(args.test),
            "test_sha256": sha256_file(args.test),
            "texts": len(texts),
            "texts_sha256": texts_sha256(texts),
            "threads": args.threads,
            "batch": BATCH,
            "artifacts": {},
        }
        for bundle in bundles:
            record = answer(bundle, texts, gold, args.threads or None)
            result["artifacts"][bundle.name] = record
            tag = " (emulated)" if args.emulated else ""
            print(
                f"{bundle.name:<24} {record['format']:<9} {record['precision']:<5} {record['backend']:<12} "
                f"{len(texts)} texts in {record['seconds']:.1f} s{tag}",
                file=sys.stderr,
            )
    except EdgekitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
