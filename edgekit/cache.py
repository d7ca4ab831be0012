"""Where edgekit caches work that is slow to redo (the demo's fine-tuned cloud model).

``$EDGEKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/edgekit``, else ``~/.cache/edgekit``.
Entries are keyed by a hash of everything that determines them, so a stale entry is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "cache_key"]


def cache_dir() -> Path:
    if os.environ.get("EDGEKIT_CACHE"):
        return Path(os.environ["EDGEKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgekit"


def cache_key(*files: Path, **params: Any) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).read_bytes())
        digest.update(b"\x00")
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
