"""The torch engine: a fine-tuned Hugging Face model directory (the cloud model) served as it is.

This module only registers the spec; the engine itself lives in the converter wing
(:mod:`edgekit.converters.torch_model`, named by import path and imported only when a model
directory is loaded), because it needs torch, transformers and the converter's classifier
loader: the ``convert`` extra, which a device running the ``runtime`` extra does not have.
:func:`edgekit.runtime.model.load_model` describes the directory with a manifest of format
``torch`` (:meth:`edgekit.manifest.Manifest.for_model_dir`) and loads it through this engine, so
``serve-cloud``, the bench's teacher row and its cold-start probe take the path of every bundle.
"""

from __future__ import annotations

from edgekit.registry import ENGINES, EngineSpec

__all__ = ["ENGINE"]

ENGINE = ENGINES.add_spec(EngineSpec(
    name="torch", loader="edgekit.converters.torch_model:load", formats=("torch",),
    requires=("torch", "transformers"), distributions=("torch", "transformers"), extra="convert",
))
