"""``edgekit predict``: ask a running edgekit server about a few texts.

Prints a table, or with ``--json`` JSON Lines: one object per text, in the order given,
with ``text``, ``label``, ``score``, ``route``, ``edge_score``, ``latency_ms``, ``top_k``
(a list of ``[label, score]``), ``model_name`` and ``model_version``. JSON Lines rather
than one list so that ``jq``/``grep`` work line by line. Module-level imports: click and
the standard library only; grpc loads when the command runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli._options import client_options, client_security

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.types import Prediction

__all__ = ["command"]

_TEXT_WIDTH = 48


@click.command("predict")
@click.option("--server", "target", required=True, metavar="HOST:PORT", help="The edgekit server to ask.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines output (one object per text) instead of a table.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Override the server's fallback threshold for this request.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Labels to return per text.")
@click.option("--no-cloud", is_flag=True, help="Answer at the edge only, however unsure.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Deadline of the request.")
@client_options
@click.argument("texts", nargs=-1, required=True)
def command(
    target: str, as_json: bool, threshold: float | None, top_k: int, no_cloud: bool, timeout_s: float,
    texts: tuple[str, ...], **security: Any,
) -> None:
    """Classify TEXT... on a running server and show who answered (EDGE, CLOUD, EDGE_CLOUD_FAILED)."""
    from edgekit.deps import require

    require("grpc", "grpc_health", extra="runtime", what="edgekit predict")
    from edgekit.runtime.client import EdgeClient

    with EdgeClient(target, timeout_s=timeout_s, **client_security(**security)) as client:
        predictions = client.classify(list(texts), top_k=top_k, allow_cloud=not no_cloud, threshold=threshold)
    if as_json:
        for text, p in zip(texts, predictions):
            click.echo(json.dumps(_record(text, p), ensure_ascii=False))
    else:
        click.echo(_table(texts, predictions, show_top_k=top_k > 1))


def _record(text: str, p: Prediction) -> dict[str, object]:
    return {
        "text": text,
        "label": p.label,
        "score": round(p.score, 6),
        "route": p.route.value,
        "edge_score": round(p.edge_score, 6),
        "latency_ms": round(p.latency_ms, 3),
        "top_k": [[label, round(score, 6)] for label, score in p.top_k],
        "model_name": p.model_name,
        "model_version": p.model_version,
    }


def _table(texts: Sequence[str], predictions: Sequence[Prediction], *, show_top_k: bool) -> str:
    header = ["label", "score", "route", "edge score", "latency ms", "text"]
    if show_top_k:
        header.insert(-1, "top k")
    rows = []
    for text, p in zip(texts, predictions):
        shown = text if len(text) <= _TEXT_WIDTH else text[: _TEXT_WIDTH - 1] + "…"
        row = [p.label, f"{p.score:.3f}", p.route.value, f"{p.edge_score:.3f}", f"{p.latency_ms:.1f}", shown]
        if show_top_k:
            row.insert(-1, ", ".join(f"{label} {score:.2f}" for label, score in p.top_k))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)
