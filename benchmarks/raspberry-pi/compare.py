"""Compare two answers files (answers.py) from different machines: same labels, scores within tolerance.

    python compare.py X86.json ARM.json [--fp32-score-tol 1e-4] [--score-tol 0.02]
                      [--min-agreement 0.99] [--tol FORMAT:PRECISION=AGREEMENT,SCORE_TOL] [--json OUT.json]

Checked per artifact, never assumed: quantized kernels are different code on x86 and ARM (int8
GEMMs, requantization, rounding), so each artifact gets a rule by its format and precision:

    artifact             labels must agree on        |score difference| at most
    any fp32             every text                  --fp32-score-tol  1e-4
    onnx int8            99% of texts                0.15   (built-in --tol onnx:int8=0.99,0.15)
    other int8 / fp16    --min-agreement  99%        --score-tol       0.02

"score" is the calibrated max probability, softmax(logits / T): what the cascade compares with its
fallback threshold, so a score difference of d can only re-route texts within d of the threshold.

Measured (README.md; tiny bundles, 452 bitext texts, x86 AVX2 vs emulated Cortex-A72 and A76):
fp32 3.6e-7, OpenVINO int8 4.8e-7, TFLite int8 5.1e-4, all labels equal. ONNX int8 (onnxruntime
dynamic quantization: MatMulInteger, uint8 activations x int8 weights) 0.105 with 449/452 labels:
the ARM result equals an exact-integer reference (onnx.reference) to 1e-3 in score with 452/452
labels; the x86 one does not. ORT's AVX2 u8s8 kernel (vpmaddubsw) adds pairs of products into a
saturating int16, so on an x86 CPU without VNNI the x86 side is the inexact one. Hence the looser
onnx-int8 rule; the others keep ~40x (int8) and ~300x (fp32) headroom over what was measured and
still catch a wrong kernel (a broken int8 path moves scores by tenths and flips labels).

Fails (exit 1) when any artifact fails its rule, is missing from either file, or differs in
format/precision/manifest; exits 2 when the two files did not answer the same texts.
Standard library only, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

EXACT_PRECISIONS = {"fp32"}
# (format, precision) -> (min label agreement, max |score difference|) that replace the generic
# quantized rule. onnx int8 is ORT dynamic quantization (MatMulInteger, u8 activations x s8 weights):
# on an x86 CPU without VNNI, ORT's AVX2 u8s8 kernel sums pairs of products in int16 with saturation
# (vpmaddubsw), so the *x86* scores are off the exact integer result; ARM computes it exactly.
# Measured on the tiny bundle: x86 vs ARM 0.097 max; ARM vs an exact-integer reference 1.1e-7.
FORMAT_RULES: dict[tuple[str, str], tuple[float, float]] = {
    ("onnx", "int8"): (0.99, 0.15),
}


def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"Error: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or "artifacts" not in data:
        raise SystemExit(f"Error: {path} is not an answers file (no 'artifacts')")
    return data


def rule_for(fmt: str, precision: str, args: argparse.Namespace) -> tuple[float, float, str]:
    """(min label agreement, max |score difference|, rule name) for an artifact."""
    if (fmt, precision) in args.rules:
        agree, tol = args.rules[(fmt, precision)]
        return agree, tol, f"{fmt}-{precision}"
    if precision in EXACT_PRECISIONS:
        return 1.0, args.fp32_score_tol, "exact"
    return args.min_agreement, args.score_tol, "quantized"


def parse_rule(text: str) -> tuple[tuple[str, str], tuple[float, float]]:
    """--tol onnx:int8=0.99,0.15 -> (("onnx", "int8"), (0.99, 0.15))"""
    try:
        key, _, value = text.partition("=")
        fmt, precision = key.split(":")
        agree, tol = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FORMAT:PRECISION=MIN_AGREEMENT,SCORE_TOL, got {text!r}") from None
    return (fmt, precision), (agree, tol)


def compare_artifact(name: str, a: dict, b: dict, args: argparse.Namespace) -> dict:
    row = {"artifact": name, "format": a.get("format"), "precision": a.get("precision"),
           "backend": f"{a.get('backend')}/{b.get('backend')}", "problems": []}
    for key in ("format", "precision", "manifest_sha256"):
        if a.get(key) != b.get(key):
            row["problems"].append(f"{key} differs: {a.get(key)!r} vs {b.get(key)!r}")
    min_agree, score_tol, rule = rule_for(str(a.get("format")), str(a.get("precision")), args)
    row.update(rule=rule, min_agreement=min_agree, score_tol=score_tol)
    la, lb, sa, sb = a["labels"], b["labels"], a["scores"], b["scores"]
    if not (len(la) == len(lb) == len(sa) == len(sb)):
        row["problems"].append(f"lengths differ: {len(la)} vs {len(lb)} answers")
        row.update(texts=0, agree=0, agreement=0.0, max_score_diff=math.inf, mean_score_diff=math.inf)
    else:
        n = len(la)
        diffs = [abs(x - y) for x, y in zip(sa, sb)]
        agree = sum(x == y for x, y in zip(la, lb))
        max_diff = max(diffs, default=0.0)
        if any(math.isnan(d) for d in diffs):
            max_diff = math.inf
            row["problems"].append("non-finite scores")
        row.update(
            texts=n,
            agree=agree,
            agreement=agree / n if n else 1.0,
            max_score_diff=max_diff,
            mean_score_diff=sum(diffs) / n if n else 0.0,
            disagreements=[i for i, (x, y) in enumerate(zip(la, lb)) if x != y][:20],
        )
        if row["agreement"] < min_agree:
            row["problems"].append(f"labels agree on {agree}/{n} < {min_agree:.0%}")
        if max_diff > score_tol:
            row["problems"].append(f"max |score diff| {max_diff:.2e} > {score_tol:g}")
    row["ok"] = not row["problems"]
    return row


def side(data: dict) -> str:
    d = data.get("device", {})
    where = d.get("board") or d.get("cpu")
    tag = f", EMULATED: {d.get('emulated', 'yes')}" if data.get("emulated") else ""
    return f"{d.get('arch')}, {where}, python {d.get('python')}{tag}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="answers from the reference machine (x86)")
    parser.add_argument("b", type=Path, help="answers from the device (ARM)")
    parser.add_argument("--fp32-score-tol", type=float, default=1e-4, help="fp32: max |score diff| (default 1e-4)")
    parser.add_argument("--score-tol", type=float, default=0.02, help="int8/fp16: max |score diff| (default 0.02)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="int8/fp16: min fraction of identical labels (default 0.99)")
    parser.add_argument("--tol", type=parse_rule, action="append", default=[], metavar="FMT:PREC=AGREE,SCORE",
                        help="rule for one format and precision, e.g. onnx:int8=0.99,0.15 (repeatable; "
                             f"built in: {', '.join(f'{f}:{p}={a},{t}' for (f, p), (a, t) in FORMAT_RULES.items())})")
    parser.add_argument("--json", type=Path, help="also write the comparison as JSON")
    args = parser.parse_args(argv)
    args.rules = {**FORMAT_RULES, **dict(args.tol)}

    a, b = load(args.a), load(args.b)
    print(f"A: {args.a}  ({side(a)})")
    print(f"B: {args.b}  ({side(b)})")
    if a.get("texts_sha256") != b.get("texts_sha256") or a.get("texts") != b.get("texts"):
        print(f"Error: the files answered different texts ({a.get('texts')} vs {b.get('texts')} texts, "
              f"sha256 {str(a.get('texts_sha256'))[:12]} vs {str(b.get('texts_sha256'))[:12]}): "
              "run both with the same test file and --limit", file=sys.stderr)
        return 2

    rows = []
    for name in sorted(set(a["artifacts"]) | set(b["artifacts"])):
        if name not in a["artifacts"] or name not in b["artifacts"]:
            where = args.a if name not in a["artifacts"] else args.b
            rows.append({"artifact": name, "ok": False, "problems": [f"missing from {where}"]})
            continue
        rows.append(compare_artifact(name, a["artifacts"][name], b["artifacts"][name], args))

    print(f"{a.get('texts')} texts\n")
    header = f"{'artifact':<20} {'format':<9} {'prec':<5} {'agree':>11} {'max|dscore|':>11} {'mean|dscore|':>12}  {'rule':<30} result"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "texts" not in r:
            print(f"{r['artifact']:<20} {'':<9} {'':<5} {'':>11} {'':>11} {'':>12}  {'':<30} FAIL: {r['problems'][0]}")
            continue
        rule = f"{r['rule']}: >={r['min_agreement']:.0%}, <={r['score_tol']:g}"
        result = "ok" if r["ok"] else "FAIL: " + "; ".join(r["problems"])
        print(f"{r['artifact']:<20} {r['format']:<9} {r['precision']:<5} {r['agree']:>5}/{r['texts']:<5} "
              f"{r['max_score_diff']:>11.2e} {r['mean_score_diff']:>12.2e}  {rule:<30} {result}")
    failed = [r["artifact"] for r in rows if not r["ok"]]
    print()
    print(f"FAIL: {', '.join(failed)}" if failed else f"PASS: all {len(rows)} artifacts within tolerance")
    if args.json:
        summary = {"a": str(args.a), "b": str(args.b), "a_device": a.get("device"), "b_device": b.get("device"),
                   "texts": a.get("texts"), "passed": not failed, "artifacts": rows}
        args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
