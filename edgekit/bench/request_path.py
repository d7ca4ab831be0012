"""Where the server's time goes after the model: each layer of the request path, on cold caches.

At one client, ``edgekit serve`` answers later than model + transport by about 0.2-0.3 ms (issue 12,
:mod:`edgekit.bench.overhead`), although a CPU profile of the server finds only tens of
microseconds of edgekit's Python per call: after the model has run (13 MB of int8 weights and its
activations through the caches), every Python step that follows runs on cold caches and costs
several times what it costs in a loop. :func:`run_request_path` measures that in one process, without
gRPC: each round, for each subject in turn (the order rotating), another instance of the same bundle
answers a different text (what the client, the echo and the other servers do between two calls of
the interleaved overhead benchmark), then the subject answers the round's text, timed.

Subjects, each one layer more than the one before (``over_model_us``: the median over rounds of its
time − the model's in the same round, which cancels what varies from round to round):

* ``model``: tokenizer + engine (``LogitModel.logits``), the in-process row of the overhead benchmark;
* ``bare answer``: + argmax and a one-field protobuf answer, serialized: what the bare model server does;
* ``fused minimum``: the least edgekit's Classify must do for one confident text, written as one
  function with no layers: validation, admission, softmax(logits / T) for the top label, the full
  protobuf answer (route, scores, latency, model, top-k), serialized. Not the served path (no
  batcher, cascade routing, options or bookkeeping): the floor any restructuring of the Python
  request path could reach, to set against ``servicer``;
* ``+ calibration, top-k``: + softmax(logits / T) and the top label (``cascade.edge_answers``);
* ``cascade, no batcher``: :class:`~edgekit.runtime.cascade.Cascade` on the model (routing, Prediction);
* ``cascade``: the same behind the micro-batcher, as served;
* ``data plane``: :meth:`DataPlane.classify` (validation, admission), its deferred bookkeeping excluded;
* ``servicer``: ``EdgeClassifier.Classify`` on a parsed request (options, the protobuf answer) and
  the answer serialized, bookkeeping excluded: what runs between gRPC's parse and its send;
* ``bookkeeping``: the deferred work alone (metrics, drift window), after the servicer's call: it runs
  after the response, off the latency (:mod:`edgekit.runtime.deferred`), and is timed on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError

__all__ = ["format_request_path_markdown", "fused_minimum_handler", "run_request_path"]


class _Context:
    """The one ServicerContext method the Classify servicer reads."""

    def time_remaining(self) -> float:
        return 30.0


def fused_minimum_handler(model: Any, dataplane: Any) -> Callable[[Any, Any], Any]:
    """The least edgekit's Classify must do for one confident text, as one gRPC handler
    (``handler(request, context) -> ClassifyResponse``) with no layers: ``dataplane``'s validation
    and admission, ``model``'s logits, softmax(logits / T) for the top label, the full answer (route,
    scores, latency, model, top-1). Not the served path (no batcher, routing, options or
    bookkeeping): the floor for the request path, here and in ``benchmarks/request_layers.py``'s
    ``fused-minimum`` server."""
    from edgekit.runtime.grpc import edgekit_pb2 as ek

    info = model.info
    inv_t, labels, edge = 1.0 / info.temperature, info.labels, ek.ROUTE_EDGE

    def handler(request: Any, context: Any) -> Any:
        texts = list(request.texts)
        dataplane.validate(texts)
        generation = dataplane._admit(len(texts))
        try:
            start = time.perf_counter()
            row = model.logits(texts)[0].tolist()
            top = max(row)
            score = 1.0 / math.fsum([math.exp((x - top) * inv_t) for x in row])
            latency_ms = (time.perf_counter() - start) * 1e3
        finally:
            dataplane._release(len(texts), generation)
        label = labels[row.index(top)]
        response = ek.ClassifyResponse(request_id=request.request_id)
        pb = response.predictions.add(label=label, score=score, route=edge, edge_score=score, latency_ms=latency_ms,
                                      model_name=info.name, model_version=info.version)
        pb.top_k.add(label=label, score=score)
        return response

    return handler


def run_request_path(bundle: Path, texts: Sequence[str], *, rounds: int = 1000, threads: int = 1) -> dict[str, Any]:
    """See the module docstring."""
    from edgekit.device import device_record
    from edgekit.runtime import deferred
    from edgekit.runtime.batching import BatchedModel
    from edgekit.runtime.cascade import Cascade, edge_answers
    from edgekit.runtime.dataplane import DataPlane
    from edgekit.runtime.grpc import edgekit_pb2 as ek
    from edgekit.runtime.grpc.servicers import EdgeClassifierServicer
    from edgekit.runtime.model import load_bundle_model
    from edgekit.runtime.types import ClassifyOptions

    if not texts:
        raise ConfigError("give at least one text")
    other = load_bundle_model(bundle, threads=threads)  # the rest of the machine, between two calls
    model = load_bundle_model(bundle, threads=threads)
    dataplane = DataPlane(model, warmup_texts=texts[:3])  # the same engine instance: two run at different speeds
    dataplane.warm_up()
    info = model.info
    plain, batched = Cascade(model), Cascade(BatchedModel(model))
    servicer, context = EdgeClassifierServicer(dataplane), _Context()
    options = ClassifyOptions(allow_cloud=False)
    requests = {t: ek.ClassifyRequest(texts=[t], allow_cloud=False) for t in texts}
    bookkeeping: list[float] = []
    recording = [False]  # past the warm-up rounds

    def bare(text: str) -> None:
        row = model.logits([text])[0]
        j = int(row.argmax())
        ek.ClassifyResponse(predictions=[ek.Prediction(label=info.labels[j], score=float(row[j]))]).SerializeToString()

    fused_handler = fused_minimum_handler(model, dataplane)

    def fused_minimum(text: str) -> bytes:
        return fused_handler(requests[text], context).SerializeToString()

    def through_servicer(text: str) -> float:
        deferred.start_call()
        servicer.Classify(requests[text], context).SerializeToString()
        answered = time.perf_counter()
        deferred.run_deferred()
        if recording[0]:
            bookkeeping.append(time.perf_counter() - answered)
        return answered

    def data_plane(text: str) -> float:
        deferred.start_call()
        dataplane.classify([text], options)
        answered = time.perf_counter()
        deferred.run_deferred()
        return answered

    subjects: dict[str, Callable[[str], Any]] = {
        "model": lambda t: model.logits([t]),
        "bare answer": bare,
        "fused minimum": fused_minimum,
        "+ calibration, top-k": lambda t: edge_answers(model.logits([t]), info.temperature, info.labels, 1),
        "cascade, no batcher": lambda t: plain.classify([t], options),
        "cascade": lambda t: batched.classify([t], options),
        "data plane": data_plane,
        "servicer": through_servicer,
    }
    for text in texts[:3]:  # the floor must do the same work: the same answer as the servicer's
        deferred.start_call()
        served = servicer.Classify(requests[text], context).predictions[0]
        deferred.run_deferred()
        fused = ek.ClassifyResponse.FromString(fused_minimum(text)).predictions[0]
        if (fused.label, fused.route) != (served.label, served.route) or abs(fused.score - served.score) > 1e-6:
            raise AssertionError(f"the fused minimum answered {fused} where the servicer answered {served}")
    times: dict[str, list[float]] = {name: [] for name in subjects}
    names = list(subjects)
    try:
        for r in range(rounds + 20):  # 20 warm-up rounds, not recorded
            text = texts[r % len(texts)]
            recording[0] = r >= 20
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                other.logits([texts[(r + k + 1) % len(texts)]])
                start = time.perf_counter()
                end = subjects[name](text)
                elapsed = (end if isinstance(end, float) else time.perf_counter()) - start
                if recording[0]:
                    times[name].append(elapsed)
    finally:
        other.close()
        dataplane.close()  # and the model it was given
    model_times = np.asarray(times["model"])
    rows = []
    for name, values in [*times.items(), ("bookkeeping", bookkeeping)]:
        row = {"subject": name, "p50_ms": round(float(np.median(values)) * 1e3, 4), "over_model_us": None}
        if name not in ("model", "bookkeeping"):  # paired: the same round's text and machine state
            row["over_model_us"] = round(float(np.median(np.asarray(values) - model_times)) * 1e6, 1)
        rows.append(row)
    return {"device": device_record(), "bundle": str(bundle), "threads": threads, "rounds": rounds, "rows": rows}


def format_request_path_markdown(result: dict[str, Any]) -> str:
    lines = [f"Bundle `{result['bundle']}`, engine threads {result['threads']}, {result['rounds']} rounds, each "
             "call after another instance of the bundle ran (cold caches):", "",
             "| subject | p50 ms | over the model µs (paired median) |", "|---|---:|---:|"]
    for row in result["rows"]:
        over = "–" if row["over_model_us"] is None else f"{row['over_model_us']:.1f}"
        lines.append(f"| {row['subject']} | {row['p50_ms']:.4f} | {over} |")
    return "\n".join(lines) + "\n"
