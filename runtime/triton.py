"""The cloud model on NVIDIA Triton Inference Server, bound through PyTriton (``edgekit serve-cloud --engine triton``).

The model (:func:`edgekit.runtime.model.load_model`: a fine-tuned Hugging Face directory on the torch
engine, or a bundle) answers inside Triton's Python backend; Triton brings the gRPC/HTTP front ends,
health and readiness, dynamic batching, model instances and Prometheus metrics. The model it serves
keeps the contract the edge's kserve-v2 client expects of any cloud model
(:class:`edgekit.runtime.cloud.KServeV2CloudClient`); shapes include the batch dimension:

* input ``text``: BYTES ``[N, 1]``, UTF-8 (Triton refuses ``[N]`` from a batching model);
* outputs ``label`` (BYTES ``[N, 1]``) and ``score`` (FP32 ``[N, 1]``: the calibrated probability of
  that label), ``top_labels`` (BYTES ``[N, K]``) and ``top_scores`` (FP32 ``[N, K]``), best first;
* the model config's ``parameters`` entry ``labels`` (:data:`LABELS_PARAMETER`): the label vocabulary
  as a JSON list of strings, which the edge checks against its bundle's labels at start-up.

PyTriton 0.7.0 requires numpy < 2, so this runs in a venv of its own (the ``cloud`` extra); it is
imported inside functions only, and this module imports neither torch nor PyTriton at import time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sysconfig
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError, EdgekitError, InvalidInput, MissingDependencyError
from edgekit.metrics import softmax

__all__ = [
    "LABELS_PARAMETER",
    "TritonSettings",
    "classify_batch",
    "default_model_name",
    "serve_triton",
]

log = logging.getLogger(__name__)

LABELS_PARAMETER = "labels"  # the model config parameter that holds the label vocabulary (JSON list)
_MODEL_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")  # what Triton (and PyTriton) accept as a model name
_CHECK_TEXT = "warm-up"


@dataclass(frozen=True)
class TritonSettings:
    """How Triton serves the model. Ports: 0 picks a free one; ``None`` (HTTP, metrics) turns it off."""

    model_name: str
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int | None = None
    metrics_port: int | None = None
    max_batch_size: int = 64  # texts per model call, over the requests Triton merged (and per request)
    queue_delay_us: int = 500  # how long Triton's dynamic batcher may hold a request to merge it with others
    dynamic_batching: bool = True  # False: every request runs on its own (still up to max_batch_size texts)
    instances: int = 1  # model copies, each with its own inference thread (Triton's instance group)
    top_k: int = 5  # width of top_labels / top_scores (at most the number of labels)

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.model_name):
            raise ConfigError(f"model name {self.model_name!r} is not allowed by Triton: use letters, digits, "
                              "'.', '_' and '-' only")
        for what, port in (("gRPC", self.grpc_port), ("HTTP", self.http_port), ("metrics", self.metrics_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{what} port must lie in [0, 65535], got {port}")
        for what, value, low in (("max_batch_size", self.max_batch_size, 1), ("queue_delay_us", self.queue_delay_us, 0),
                                 ("instances", self.instances, 1), ("top_k", self.top_k, 1)):
            if value < low:
                raise ConfigError(f"{what} must be at least {low}, got {value}")


def default_model_name(model_dir: str | Path) -> str:
    """The directory's name made a valid Triton model name (other characters become '-')."""
    name = re.sub(r"[^a-zA-Z0-9._-]+", "-", Path(model_dir).resolve().name).strip("-.")
    return name or "model"


def classify_batch(model: Any, text: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """One Triton batch: ``text`` ``[N, 1]`` (bytes or str items) → the four outputs, ``N`` rows each.

    ``model`` is a :class:`~edgekit.runtime.types.LogitModel`; scores are ``softmax(logits / T)`` with
    the model's calibration temperature, as the built-in ``serve-cloud`` reports them."""
    if text.ndim != 2 or text.shape[1] != 1:
        raise InvalidInput(f"input 'text' must have shape [N, 1], got {list(text.shape)}")
    texts = []
    for i, item in enumerate(text[:, 0]):
        try:
            texts.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"text[{i}] is not valid UTF-8") from exc
    labels = np.asarray([label.encode("utf-8") for label in model.info.labels], dtype=np.bytes_)
    probs = softmax(model.logits(texts), model.info.temperature)
    k = min(top_k, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
    return {
        "label": labels[order[:, :1]],
        "score": top_scores[:, :1],
        "top_labels": labels[order],
        "top_scores": top_scores,
    }


def _pytriton() -> Any:
    try:
        import pytriton.triton
    except ImportError as exc:
        raise MissingDependencyError("nvidia-pytriton", "cloud", what="serve-cloud --engine triton") from exc
    return pytriton.triton


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _resolve_ports(settings: TritonSettings) -> dict[str, int | None]:
    """Port 0 becomes a free port now: Triton must be told a number (it fails clearly on a port in use)."""
    ports = {what: _free_port(settings.host) if port == 0 else port
             for what, port in (("grpc", settings.grpc_port), ("http", settings.http_port),
                                ("metrics", settings.metrics_port))}
    chosen = [p for p in ports.values() if p is not None]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"the gRPC, HTTP and metrics ports must differ, got {ports}")
    return ports


def _libpython_dir() -> str | None:
    """The directory of this interpreter's shared libpython, if it has one (pyenv, a built Python)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return str(libdir)
    return None


def _put_libpython_on_path() -> None:
    """Triton's Python-backend stub loads libpython of the running interpreter; an interpreter that is
    not the system's (pyenv) keeps it where the dynamic loader does not look, and the stub then picks
    the system's libpython beside this standard library and fails at model load. Put its directory
    first on the child processes' LD_LIBRARY_PATH (this process is unaffected)."""
    libdir = _libpython_dir()
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in current:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *current])
        log.info("LD_LIBRARY_PATH for tritonserver starts with %s (this interpreter's libpython)", libdir)


def _bind(triton: Any, models: Sequence[Any], settings: TritonSettings) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    labels = list(models[0].info.labels)
    k = min(settings.top_k, len(labels))

    def instance(model: Any) -> Callable[..., dict[str, np.ndarray]]:
        @batch
        def infer(text: np.ndarray) -> dict[str, np.ndarray]:
            return classify_batch(model, text, k)

        return infer

    batcher = (DynamicBatcher(max_queue_delay_microseconds=settings.queue_delay_us)
               if settings.dynamic_batching else None)  # None: no dynamic_batching block, requests run alone
    triton.bind(
        model_name=settings.model_name,
        infer_func=[instance(m) for m in models],
        inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
        outputs=[
            Tensor(name="label", dtype=bytes, shape=(1,)),
            Tensor(name="score", dtype=np.float32, shape=(1,)),
            Tensor(name="top_labels", dtype=bytes, shape=(k,)),
            Tensor(name="top_scores", dtype=np.float32, shape=(k,)),
        ],
        config=ModelConfig(max_batch_size=settings.max_batch_size, batcher=batcher),
        strict=True,
    )
    _declare_labels(triton, settings.model_name, labels)


def _declare_labels(triton: Any, model_name: str, labels: list[str]) -> None:
    """Put the label vocabulary into the model config's ``parameters`` (what a team writes into its
    config.pbtxt). PyTriton 0.7.0 has no public option for config parameters: its model keeps the
    Triton config it will load in ``_get_triton_model_config()`` (cached; ``backend_parameters``
    become ``parameters``), filled here after ``bind`` and before ``run`` loads the model."""
    try:
        model = next(m for m in triton._model_manager.models if m.model_name == model_name)
        model._get_triton_model_config().backend_parameters[LABELS_PARAMETER] = json.dumps(labels)
    except (AttributeError, StopIteration) as exc:  # another PyTriton than the pinned 0.7.0
        raise EdgekitError("cannot declare the labels in the Triton model config with this PyTriton version",
                           hint='pip install "edgekit[cloud]" (nvidia-pytriton==0.7.0)') from exc


def _check_through_triton(url: str, settings: TritonSettings, labels: Sequence[str]) -> None:
    """One text through Triton itself (gRPC, the stub, the proxy, the model) before saying it is ready."""
    from pytriton.client import ModelClient

    with ModelClient(url, settings.model_name, init_timeout_s=60, inference_timeout_s=60) as client:
        out = client.infer_batch(text=np.array([[_CHECK_TEXT.encode()]], dtype=np.object_))
    label = out["label"][0, 0]
    if (label.decode() if isinstance(label, bytes) else str(label)) not in labels:
        raise EdgekitError(f"the Triton model answered {label!r}, not one of its labels")


def serve_triton(model_dir: str | Path, settings: TritonSettings, *, device: str = "cpu",
                 echo: Callable[[str], None] = print) -> None:
    """Load ``settings.instances`` copies of the model, bind them to a Triton server, check one text
    through it, ``echo`` the ready line(s), serve until SIGTERM/SIGINT (or Triton dies: an error)."""
    tri = _pytriton()
    ports = _resolve_ports(settings)
    # Until the stop handlers below are in place, SIGTERM unwinds like Ctrl-C, so the finally
    # clauses stop tritonserver and PyTriton removes its workspace (~/.cache/pytriton/workspace_*)
    _interrupt_on_sigterm()
    models = _load_warm(model_dir, settings.instances, device)
    try:
        _put_libpython_on_path()
        stop = threading.Event()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="pytriton")  # "tritonclient.grpc doesn't support timeout ..."
            triton = tri.Triton(config=_triton_config(tri, settings.host, ports, device))
            try:
                _bind(triton, models, settings)
                _install_stop_handlers(stop)
                _start(triton, settings, ports["grpc"], models[0].info.labels)
                if stop.is_set():  # a signal during start-up
                    return
                for line in _ready_lines(settings, models[0].info, ports, device):
                    echo(line)
                while not stop.wait(0.5):
                    if not triton.is_alive():
                        raise EdgekitError("tritonserver stopped on its own (see its log above)")
            finally:
                triton.stop()
    finally:
        for model in models:
            model.close()


def _load_warm(model_dir: str | Path, instances: int, device: str) -> list[Any]:
    """One model per instance, each warmed up before Triton loads it (ready then means warm)."""
    from edgekit.runtime.model import load_model

    models: list[Any] = []
    try:
        for _ in range(instances):
            models.append(load_model(model_dir, device=device))
            models[-1].logits([_CHECK_TEXT])
    except BaseException:
        for model in models:
            model.close()
        raise
    return models


def _triton_config(tri: Any, host: str, ports: dict[str, int | None], device: str) -> Any:
    return tri.TritonConfig(
        grpc_address=host, grpc_port=ports["grpc"],
        allow_http=ports["http"] is not None, http_address=host, http_port=ports["http"],
        allow_metrics=ports["metrics"] is not None, metrics_port=ports["metrics"], metrics_address=host,
        allow_gpu_metrics=device.startswith("cuda"),
    )


def _start(triton: Any, settings: TritonSettings, grpc_port: int | None, labels: Sequence[str]) -> None:
    """Start tritonserver, load the model, and send one text through it; EdgekitError if any fails."""
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    try:
        triton.run()
        _check_through_triton(f"grpc://{local}:{grpc_port}", settings, labels)
    except Exception as exc:  # PyTriton's, tritonclient's: wrapped once, first line (the log has it all)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise EdgekitError(
            f"Triton did not start serving {settings.model_name!r}: {first}",
            hint="see tritonserver's log above; the Python-backend stub needs this interpreter's "
                 "libpython (LD_LIBRARY_PATH, see README)",
        ) from exc


def _ready_lines(settings: TritonSettings, info: Any, ports: dict[str, int | None], device: str) -> list[str]:
    """``serving NAME (...) on HOST:PORT`` (what scripts parse, as for the built-in server), then the extras."""
    batching = (f"dynamic batching up to {settings.max_batch_size}, delay {settings.queue_delay_us} us"
                if settings.dynamic_batching else f"no dynamic batching, max batch {settings.max_batch_size}")
    lines = [(f"serving {settings.model_name} ({info.format}/{info.precision}, engine triton, "
              f"{settings.instances} instance(s) on {device}, {batching}) on {settings.host}:{ports['grpc']}")]
    if ports["http"] is not None:
        lines.append(f"triton http on http://{settings.host}:{ports['http']}/v2")
    if ports["metrics"] is not None:
        lines.append(f"metrics on http://{settings.host}:{ports['metrics']}/metrics")
    return lines


def _interrupt_on_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def _install_stop_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
