"""Build a directory beside its final place and swap it in: a failed or killed build leaves no half.

Used for model directories (``finetune``), bundles (``convert``) and the bench's Optimum baseline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["building_dir", "replace_dir"]


def replace_dir(src: Path, final: Path) -> None:
    """Move ``src`` to ``final``, replacing what is there (moved aside first, restored if the move fails)."""
    src, final = Path(src), Path(final)
    if not final.exists():
        os.replace(src, final)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, aside / final.name)
    try:
        os.replace(src, final)
    except BaseException:
        os.replace(aside / final.name, final)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final``; on success it becomes ``final``, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
