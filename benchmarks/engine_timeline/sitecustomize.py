"""Profile hooks for ``edgekit serve`` (and the benchmarks' bare servers), loaded through PYTHONPATH.

``EDGEKIT_TIMELINE=FILE`` (``benchmarks/engine_timeline.py``): every call the micro-batcher makes
(start, end, texts, thread) and every ONNX Runtime ``InferenceSession.run`` (start, end) is kept,
and the lists are written to FILE (JSON) every second.

``EDGEKIT_LAYERS=FILE`` (``benchmarks/request_layers.py``): each unary call a gRPC worker thread
(or edgekit's fast lane) runs is timed layer by layer (gRPC's handler call and response, the servicer, the data plane, the
cascade, the batcher, tokenizer and engine): per call, every layer's time and its *own* time (its
time less its timed callees'), written to FILE (JSON, one dict per call) every second. Layers that
run outside a call (the warm-up) are not counted. Each timed layer adds its wrapper's cost (a
Python call and two clock reads) to its caller's own time.

Hand-written: py-spy samples stacks at a few kHz, too coarse for a request path of ~0.2 ms of
Python per call, and counts a thread blocked in native code (gRPC's send) as busy; cProfile's cost
per call would dwarf the figures. Wrapping the few functions on the path costs microseconds.
"""

import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time

_TIMELINE = os.environ.get("EDGEKIT_TIMELINE")
_LAYERS = os.environ.get("EDGEKIT_LAYERS")
_PATCHES = {}


def _dump_forever(path, snapshot):
    while True:
        time.sleep(1.0)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(snapshot(), f)
        os.replace(tmp, path)


if _TIMELINE:
    _calls, _runs = [], []
    threading.Thread(target=_dump_forever, args=(_TIMELINE, lambda: {"calls": list(_calls), "runs": list(_runs)}),
                     name="timeline-dump", daemon=True).start()

    def _patch_batcher(module):
        original = module.MicroBatcher._call

        def _call(self, items, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self, items, *args, **kwargs)
            finally:
                _calls.append((start, time.perf_counter(), len(items), threading.current_thread().name))

        module.MicroBatcher._call = _call

    def _patch_onnxruntime(module):
        original = module.InferenceSession.run

        def run(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                _runs.append((start, time.perf_counter()))

        module.InferenceSession.run = run

    _PATCHES.update({"edgekit.runtime.batching": [_patch_batcher], "onnxruntime": [_patch_onnxruntime]})

if _LAYERS:
    # module -> (attribute path, layer name); a root layer opens a call's record: grpcio's worker
    # running a call, or edgekit's fast lane running one (parse, servicer, answer sent)
    _ROOT, _LANE_ROOT = "grpc: worker runs the call", "lane: runs the call"
    _ROOTS = (_ROOT, _LANE_ROOT)
    _TIMED = {
        "grpc._server": [("_unary_response_in_pool", _ROOT), ("_call_behavior", "grpc: handler call"),
                         ("_status", "grpc: response sent")],
        "edgekit.runtime.grpc.lane": [("FastLane._run", _LANE_ROOT)],
        "edgekit.runtime.grpc.servicers": [("EdgeClassifierServicer.Classify", "servicer: Classify")],
        "edgekit.runtime.dataplane": [("DataPlane.classify", "data plane: classify"),
                                      ("DataPlane.validate", "data plane: validate"),
                                      ("DataPlane._admit", "data plane: admit"),
                                      ("DataPlane._release", "data plane: release")],
        "edgekit.runtime.cascade": [("Cascade.classify", "cascade: classify"),
                                    ("edge_answers", "cascade: calibration, top-k")],
        "edgekit.runtime.batching": [("BatchedModel.logits_until", "batcher: logits"),
                                     ("MicroBatcher.submit", "batcher: submit")],
        "edgekit.runtime.model": [("BundleModel.logits", "model: logits"), ("BundleModel.encode", "model: tokenize"),
                                  ("BundleModel.run_encoded", "model: run")],
        "onnxruntime": [("InferenceSession.run", "onnxruntime: run")],
    }
    _records = []
    _local = threading.local()

    def _timed(original, name):
        clock = time.perf_counter

        def timed(*args, **kwargs):
            stack = getattr(_local, "stack", None)
            if stack is None:
                if name not in _ROOTS:
                    return original(*args, **kwargs)  # outside a call: not counted
                stack = _local.stack = []
                _local.record = {}
            frame = [0.0]  # the time of timed callees
            stack.append(frame)
            start = clock()
            try:
                return original(*args, **kwargs)
            finally:
                took = clock() - start
                stack.pop()
                record = _local.record
                total, own = record.get(name, (0.0, 0.0))
                record[name] = (total + took, own + took - frame[0])
                if stack:
                    stack[-1][0] += took
                else:
                    _local.stack = None
                    _records.append(record)

        return timed

    def _layer_patcher(specs):
        def patch(module):
            for path, name in specs:
                *owner_path, attr = path.split(".")
                owner = module
                for part in owner_path:
                    owner = getattr(owner, part)
                setattr(owner, attr, _timed(getattr(owner, attr), name))

        return patch

    for _module, _specs in _TIMED.items():
        _PATCHES.setdefault(_module, []).append(_layer_patcher(_specs))
    threading.Thread(target=_dump_forever, args=(_LAYERS, lambda: list(_records)), name="layers-dump",
                     daemon=True).start()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patch each module of _PATCHES right after it is first imported."""

    def find_spec(self, name, path, target=None):
        patches = _PATCHES.pop(name, None)
        if patches is None:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            if _PATCHES:
                sys.meta_path.insert(0, self)
        load = spec.loader.exec_module

        def exec_and_patch(module):
            load(module)
            for patch in patches:
                patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _PATCHES:
    sys.meta_path.insert(0, _PatchOnImport())
