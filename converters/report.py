"""``report.json`` (one row per artifact and one for the teacher), ``report.md`` and two plots."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.manifest import atomic_write_text
from edgekit.plots import pyplot, save_figure

__all__ = ["write_report"]


def _fmt(value, kind: str = "f4") -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "mb":
        return f"{value / 1e6:.1f}"
    if kind == "ms":
        return f"{value:.2f}"
    return f"{value:.4f}"


def _student_lines(student: dict) -> list[str]:
    """The student's start (what was probed, why the winner won), its epochs and its vocabulary."""
    lines: list[str] = []
    if student.get("probed"):
        lines += ["", f"Student start ({student.get('choice_reason', '')}): each candidate encoder frozen, read with "
                  "its pooling, with a logistic-regression head fitted on the training texts:", "",
                  "| start | pooling | parameters | frozen probe, validation accuracy |", "|---|---|---:|---:|"]
        lines += [f"| {p['name']} | {p['pooling']} | {p['parameters'] / 1e6:.1f}M | "
                  f"{p['probe_validation_accuracy']:.4f} |" for p in student["probed"]]
        lines.append("")
    if student.get("history"):
        lines.append("Distillation, validation accuracy at the warm start (epoch 0) and after each epoch: "
                     + ", ".join(f"{h['validation']:.4f}" for h in student["history"])
                     + f" (best epoch {student['best_epoch']}, teacher temperature "
                     f"{student.get('teacher_temperature', 1.0):.3f}).")
    pruning = student.get("vocab_pruning")
    if pruning:
        verdict = "pruned" if pruning.get("applied", True) else "kept whole"
        lines.append(
            f"Vocabulary {verdict}: pruning {pruning['tokens_before']} → {pruning['tokens_after']} tokens would save "
            f"{pruning['bytes_saved_fp32'] / 1e6:.1f} MB in fp32; the pruned start agreed "
            f"{pruning['agreement_with_unpruned']:.4f} with the whole vocabulary on validation, which the "
            f"pruning corpus does not include (rule: {pruning.get('rule', 'forced')})."
        )
    return lines


def _pct_or(value, missing: str = "not reached") -> str:
    return missing if value is None else f"{value:.1%}"


def _feedback_lines(fb: dict) -> list[str]:
    """``--feedback DIR``: what was read and used, and the new bundles against the one in service."""
    c = fb["records"]
    teacher = fb.get("teacher_agreement_with_cloud")
    lines = ["", "## Feedback: what the cloud answered in service", "",
             f"{c['read']} records read from `{fb['directory']}` (bundle versions: "
             + ", ".join(f"{v or '?'} ({n})" for v, n in fb["versions"].items()) + f"); {c['used']} texts used: "
             f"{c['duplicates']} repeated texts merged (targets averaged), {c['in_training']} training texts and "
             f"{c['in_held_out']} validation or test texts left out, {c['unknown_label']} records with a label the "
             f"model does not have skipped. Weight {fb['weight']:g}: {fb['transfer_texts']} texts in the transfer "
             f"set, KD-only, soft targets: {fb['soft_targets']}."
             + (f" The teacher agrees with the recorded cloud answers on {teacher:.1%} of those texts." if teacher
                is not None else "")]
    rows = fb.get("comparison") or []
    if not rows:
        return lines
    base = fb.get("baseline")
    if base:
        lines.append(f"Baseline (the bundle in service): `{base['bundle']}`, version {base['version']}, which asked "
                     f"{base['records_it_asked']} of the records.")
    lines += ["", f"On the {fb['recorded_texts']} recorded texts the reference is what the cloud answered (the "
              "new bundles learned these texts: the figures are in-sample for them); on the test split it is the "
              "gold label, with the teacher as the cloud. Cloud rate: at each bundle's own threshold; *at the "
              "baseline's cascade*: the lowest cloud rate at which the bundle's cascade is as accurate as the "
              "baseline's at its threshold.", "",
              "| bundle | recorded: agreement with cloud | recorded: cloud rate | recorded: at baseline's cascade "
              "| test: accuracy | test: cloud rate | test: cascade acc. | test: at baseline's cascade |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    key = "cloud_rate_at_baseline_cascade"
    for r in rows:
        rec, test = r["recorded"], r["test"]
        lines.append(f"| {r['bundle']} | {_fmt(rec['agreement_with_cloud'])} | {_fmt(rec['cloud_rate'], 'pct')} | "
                     f"{_pct_or(rec[key]) if key in rec else '–'} | {_fmt(test['accuracy'])} | "
                     f"{_fmt(test['cloud_rate'], 'pct')} | {_fmt(test['cascade_accuracy'])} | "
                     f"{_pct_or(test[key]) if key in test else '–'} |")
    return lines


def write_report(out: Path, rows: list[dict], candidates, teacher: dict, student: dict,
                 stages: dict[str, dict] | None = None, feedback: dict | None = None) -> None:
    """``stages``: wall seconds (and notes such as "cached") per stage of the conversion; ``feedback``:
    the ``--feedback`` section (edgekit.converters.pipeline), or None."""
    report = {"rows": rows, "student": student, "stages": stages or {}}
    if feedback is not None:
        report["feedback"] = feedback
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    lines = [
        "# edgekit convert report",
        "",
        f"Teacher: test accuracy {teacher['accuracy']:.4f}, macro-F1 {teacher['macro_f1']:.4f}, "
        f"{teacher['size_bytes'] / 1e6:.1f} MB.",
        f"Student: {student['parameters'] / 1e6:.1f}M parameters from {student['source']}"
        + (f" (teacher layers {student['teacher_layers']})" if student.get("teacher_layers") else "")
        + f", validation accuracy {student['validation_accuracy']:.4f}.",
    ]
    lines += _student_lines(student)
    if stages:
        lines.append("Wall time per stage: " + "; ".join(
            f"{name} {v['seconds']:.1f} s" + (f" ({', '.join(v['notes'])})" if v.get("notes") else "")
            for name, v in stages.items()) + ".")
    lines += [
        "",
        "Accuracy, macro-F1 and agreement with the teacher on the test split; latency is batch 1, one thread, "
        "tokenization included, on the machine that ran the conversion. The threshold is chosen on validation; "
        "cloud rate and cascade accuracy are on test.",
        "",
        "| artifact | variant | status | size MB | accuracy | macro-F1 | agreement | p50 ms | ECE before → after | threshold | cloud rate | cascade acc. | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        ece = f"{_fmt(r.get('ece_before'))} → {_fmt(r.get('ece_after'))}" if r.get("ece_before") is not None else "–"
        lines.append(
            f"| {r['artifact']} | {r['variant']} | {r['status']} | {_fmt(r['size_bytes'], 'mb')} | {_fmt(r['accuracy'])} | "
            f"{_fmt(r['macro_f1'])} | {_fmt(r.get('agreement'))} | {_fmt(r.get('latency_ms_p50'), 'ms')} | {ece} | "
            f"{_fmt(r.get('threshold'))} | {_fmt(r.get('cloud_rate'), 'pct')} | {_fmt(r.get('cascade_accuracy'))} | "
            f"{r.get('reason', '')} |"
        )
    if feedback is not None:
        lines += _feedback_lines(feedback)
    written = [c for c in candidates if c.status == "written"]
    if written:
        lines += ["", "## Risk-coverage (test split)", ""]
        for c in written:
            lines += [f"**{c.name}** ({c.variant})", "", "| coverage | threshold | edge acc. | cloud rate | cascade acc. |",
                      "|---:|---:|---:|---:|---:|"]
            lines += [f"| {p['coverage']:.1%} | {p['threshold']:.4f} | {p['edge_accuracy']:.4f} | {p['cloud_rate']:.1%} | "
                      f"{p['cascade_accuracy']:.4f} |" for p in c.risk_coverage]
            lines.append("")
    lines += ["![accuracy against size](accuracy_vs_size.png)", "", "![cascade](cascade.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_text(out / "risk_coverage.json", json.dumps({c.name: c.risk_coverage for c in written}, indent=2))
    _plots(out, rows, written, teacher)


def _plots(out: Path, rows: list[dict], written, teacher: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        marker = "*" if r["status"] == "teacher" else "o" if r["status"] == "written" else "x"
        ax.scatter(r["size_bytes"] / 1e6, r["accuracy"], marker=marker, s=60)
        ax.annotate(r["artifact"] if r["status"] != "teacher" else "teacher", (r["size_bytes"] / 1e6, r["accuracy"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    save_figure(fig, ax, out / "accuracy_vs_size.png", xlabel="size (MB, log scale)", ylabel="test accuracy",
                title="accuracy against size (o written, x rejected/not selected)", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in written:
        pts = sorted(c.risk_coverage, key=lambda p: p["cloud_rate"])
        ax.plot([p["cloud_rate"] for p in pts], [p["cascade_accuracy"] for p in pts], marker=".", label=c.name)
        ax.scatter([c.metrics["cloud_rate"]], [c.metrics["cascade_accuracy"]], marker="D", s=30)
    ax.axhline(teacher["accuracy"], linestyle="--", color="grey", label="teacher")
    save_figure(fig, ax, out / "cascade.png", xlabel="cloud rate (share of queries sent to the teacher)",
                ylabel="cascade accuracy (test)", title="edge + cloud cascade (diamond: chosen threshold)", dpi=110,
                legend=True)
