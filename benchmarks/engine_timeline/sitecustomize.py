"""Loaded by ``benchmarks/engine_timeline.py``'s server (through PYTHONPATH): records when the model ran.

With ``EDGEKIT_TIMELINE=FILE`` set, every call the micro-batcher makes (start, end, texts, thread)
and every ONNX Runtime ``InferenceSession.run`` (start, end) is kept, and the lists are written to
FILE (JSON) every second. Hand-written: py-spy samples stacks, but the question here is how long the
engine sat idle between calls, which needs each call's start and end.
"""

import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time

_OUT = os.environ.get("EDGEKIT_TIMELINE")
if _OUT:
    _calls, _runs = [], []

    def _dump_forever():
        while True:
            time.sleep(1.0)
            tmp = _OUT + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"calls": list(_calls), "runs": list(_runs)}, f)
            os.replace(tmp, _OUT)

    threading.Thread(target=_dump_forever, name="timeline-dump", daemon=True).start()

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

    _PATCHES = {"edgekit.runtime.batching": _patch_batcher, "onnxruntime": _patch_onnxruntime}

    class _PatchOnImport(importlib.abc.MetaPathFinder):
        """Patch each module of _PATCHES right after it is first imported."""

        def find_spec(self, name, path, target=None):
            patch = _PATCHES.pop(name, None)
            if patch is None:
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
                patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _PatchOnImport())
