"""Run inside a venv that has only `pip install ".[runtime]"`: no torch, no transformers.

Serves every bundle the test run kept (EDGEKIT_KEEP_BUNDLES) with `edgekit serve`'s server,
classifies the kept test texts over gRPC, and compares the labels with the full environment's.
"""

import json
import sys
from pathlib import Path

import importlib.util

for heavy in ("torch", "transformers"):
    if importlib.util.find_spec(heavy) is not None:
        sys.exit(f"runtime-only check: {heavy} is installed, the check would prove nothing")

from edgekit.runtime.client import EdgeClient  # noqa: E402
from edgekit.runtime.model import load_bundle_model  # noqa: E402
from edgekit.runtime.server import build_server  # noqa: E402

root = Path(sys.argv[1])
expected = json.loads((root / "expected.json").read_text())
texts = expected["texts"]
chunk = expected.get("chunk", 32)  # the request size the expected labels were computed with
failed = 0
for name, labels in sorted(expected["labels"].items()):
    server = build_server(load_bundle_model(root / name))
    try:
        with EdgeClient(server.address, timeout_s=60) as client:
            got = []
            for start in range(0, len(texts), chunk):
                got += [p.label for p in client.classify(texts[start : start + chunk], allow_cloud=False)]
    finally:
        server.stop(0)
    same = sum(g == e for g, e in zip(got, labels))
    ok = same == len(labels)
    failed += not ok
    print(f"runtime-only: {name}: {same}/{len(labels)} labels as in the full environment {'ok' if ok else 'MISMATCH'}")
if "torch" in sys.modules or "transformers" in sys.modules:
    sys.exit("runtime-only check: torch or transformers was imported")
print(f"runtime-only: {len(expected['labels']) - failed} passed, {failed} failed")
sys.exit(1 if failed or not expected["labels"] else 0)
