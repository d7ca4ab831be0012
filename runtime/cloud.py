"""Clients for the cloud model the cascade falls back to.

The cascade needs one thing from the cloud: a label and a score for each of a few texts,
within a deadline. :class:`CloudClient` is that contract; two gRPC implementations ship:

* :class:`EdgekitCloudClient` asks another edgekit server (``edgekit serve-cloud``) through
  ``edgekit.v1.EdgeClassifier/Classify`` with ``allow_cloud=false``, so two edge servers
  pointed at each other can never loop.
* :class:`KServeV2CloudClient` asks any Open Inference Protocol v2 server (Triton, KServe,
  or edgekit's own v2 endpoint) through ``inference.GRPCInferenceService/ModelInfer``.

Every failure (connection refused, deadline exceeded, an error status, a malformed answer)
surfaces as :class:`~edgekit.errors.CloudUnavailable` wrapping the original error, which is
what the cascade's degrade/fail policy acts on.

Both clients also check, at start-up, that the cloud model answers with the edge bundle's labels
(``expect_labels``, called by ``edgekit serve``): a Triton model declares its vocabulary in its
model config (``parameters`` entry ``labels``, a JSON list), an edgekit server in GetModelInfo.
A difference is refused at once (:class:`~edgekit.errors.ModelError`); a cloud that cannot be
asked at start-up is asked before its first call, and a difference found then makes every call
fail (route EDGE_CLOUD_FAILED) with that reason.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import grpc
import numpy as np

from edgekit.errors import CloudUnavailable, ModelError
from edgekit.runtime.grpc import decode_bytes_tensor
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc
from edgekit.runtime.security import bearer_metadata
from edgekit.runtime.triton import LABELS_PARAMETER

__all__ = ["CloudClient", "EdgekitCloudClient", "KServeV2CloudClient", "V2TensorNames"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@runtime_checkable
class CloudClient(Protocol):
    """A cloud model: one ``(label, score)`` per text, in order, or CloudUnavailable.

    ``classify`` must return or raise within about ``timeout_s`` (the gRPC clients pass it
    as the call's deadline) and be safe to call from several threads at once. A client may also
    offer ``expect_labels(labels, timeout_s)`` (the label check above; both clients here do).
    """

    def classify(self, texts: Sequence[str], timeout_s: float) -> list[tuple[str, float]]: ...

    def close(self) -> None: ...


def _channel(target: str, credentials: grpc.ChannelCredentials | None, max_message_bytes: int) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


@contextmanager
def _as_cloud_errors(target: str) -> Iterator[None]:
    """Turn anything that goes wrong talking to the cloud into CloudUnavailable, cause attached."""
    try:
        yield
    except CloudUnavailable:
        raise
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        raise CloudUnavailable(f"cloud model at {target} failed: {code}: {details}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CloudUnavailable(f"cloud model at {target} sent a malformed answer: {exc}") from exc


def _label_difference(edge: Sequence[str], cloud: Sequence[str]) -> str | None:
    """None if both vocabularies hold the same labels (answers are exchanged by name: order is free)."""
    missing, unknown = sorted(set(edge) - set(cloud)), sorted(set(cloud) - set(edge))
    if not missing and not unknown:
        return None
    parts = ([f"the cloud lacks {missing}"] if missing else []) + ([f"the bundle lacks {unknown}"] if unknown else [])
    return "; ".join(parts)


class _LabelCheck:
    """The cloud model's label vocabulary against the bundle's: now (``expect``), or before the first
    call when the cloud could not be asked then (``before_call``)."""

    def __init__(self, who: str, fetch: Callable[[float], Sequence[str] | None]) -> None:
        self._who = who  # "the cloud model 'x' at host:port"
        self._fetch = fetch  # the cloud's labels, None if it declares none; raises CloudUnavailable
        self._expected: tuple[str, ...] | None = None  # still to check
        self._refusal: str | None = None
        self._lock = threading.Lock()

    def expect(self, labels: Sequence[str], timeout_s: float) -> bool:
        """Check now: ModelError if the vocabularies differ or the cloud declares none; False (and a
        warning) if the cloud cannot be asked now, True if checked."""
        self._expected = tuple(labels)
        try:
            problem = self._compare(self._expected, self._fetch(timeout_s))
        except CloudUnavailable as exc:
            log.warning("event=cloud_labels_unchecked reason=%r (checked before the first cloud call)", str(exc))
            return False
        self._expected = None
        if problem is not None:
            raise problem
        return True

    def before_call(self, timeout_s: float) -> None:
        """CloudUnavailable if the cloud's labels were found to differ; checks them if not done yet."""
        if self._refusal is None and self._expected is not None:
            with self._lock:
                if self._expected is not None:
                    try:  # CloudUnavailable: still unchecked, asked again at the next call
                        problem = self._compare(self._expected, self._fetch(timeout_s))
                    except ModelError as exc:  # no such model, a malformed declaration
                        problem = exc
                    self._expected = None
                    if problem is not None:
                        self._refusal = problem.message
                        log.error("event=cloud_refused reason=%r", self._refusal)
        if self._refusal is not None:
            raise CloudUnavailable(self._refusal)

    def _compare(self, edge: Sequence[str], cloud: Sequence[str] | None) -> ModelError | None:
        """Why the cloud's labels do not do for the bundle's, or None."""
        if cloud is None:
            return ModelError(
                f"{self._who} declares no label vocabulary to check against the bundle's (a Triton model: "
                f"parameters {{ key: \"{LABELS_PARAMETER}\" value: {{ string_value: '[\"label\", ...]' }} }} "
                "in its config.pbtxt)",
                hint="declare them, or skip the check: edgekit serve --skip-cloud-label-check",
            )
        difference = _label_difference(edge, cloud)
        return None if difference is None else ModelError(f"{self._who} answers other labels than the bundle: "
                                                          f"{difference}")


class EdgekitCloudClient:
    """Another edgekit server as the cloud model (``edgekit serve-cloud``)."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self._metadata = bearer_metadata(token)
        self._channel = _channel(target, credentials, max_message_bytes)
        self._stub = ek_grpc.EdgeClassifierStub(self._channel)
        self._labels = _LabelCheck(f"the cloud model at {target}", self._cloud_labels)

    def expect_labels(self, labels: Sequence[str], timeout_s: float) -> bool:
        """The label check (see the module docstring): ModelError if they differ, False if not checked yet."""
        return self._labels.expect(labels, timeout_s)

    def _cloud_labels(self, timeout_s: float) -> tuple[str, ...] | None:
        with _as_cloud_errors(self.target):
            try:
                info = self._stub.GetModelInfo(ek.GetModelInfoRequest(), timeout=timeout_s, metadata=self._metadata)
            except grpc.RpcError as exc:
                if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return None  # a server with Classify only: it declares no labels
                raise
        return tuple(info.labels)

    def classify(self, texts: Sequence[str], timeout_s: float) -> list[tuple[str, float]]:
        request = ek.ClassifyRequest(texts=list(texts), top_k=1, allow_cloud=False)
        with _as_cloud_errors(self.target):
            self._labels.before_call(timeout_s)
            response = self._stub.Classify(request, timeout=timeout_s, metadata=self._metadata)
            if len(response.predictions) != len(texts):
                raise ValueError(f"{len(response.predictions)} predictions for {len(texts)} texts")
        return [(p.label, float(p.score)) for p in response.predictions]

    def close(self) -> None:
        self._channel.close()


# Triton's ModelConfig RPC is not part of the Open Inference Protocol proto shipped here. Its request
# has the wire format of ModelMetadataRequest (name = 1, version = 2); of its response the edge needs
# config (1) .max_batch_size (4) and .parameters (14, map<string, ModelParameter{string_value = 1}>),
# so a message declaring just those parses Triton's answer (protobuf skips unknown fields; a map is
# a repeated key = 1 / value = 2 entry on the wire). Numbers from Triton's model_config.proto and
# grpc_service.proto (checked against tritonclient's generated model_config_pb2 / service_pb2).
_MODEL_CONFIG_METHOD = "/inference.GRPCInferenceService/ModelConfig"


@functools.cache
def _model_config_response_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    package = "edgekit.triton_config_subset"
    proto = descriptor_pb2.FileDescriptorProto(name=f"{package.replace('.', '/')}.proto", package=package,
                                               syntax="proto3")
    messages = {
        "ModelParameter": [("string_value", 1, field.TYPE_STRING, None)],
        "ParameterEntry": [("key", 1, field.TYPE_STRING, None), ("value", 2, field.TYPE_MESSAGE, "ModelParameter")],
        "ModelConfig": [("max_batch_size", 4, field.TYPE_INT32, None),
                        ("parameters", 14, field.TYPE_MESSAGE, "ParameterEntry")],
        "ModelConfigResponse": [("config", 1, field.TYPE_MESSAGE, "ModelConfig")],
    }
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            label = field.LABEL_REPEATED if field_name == "parameters" else field.LABEL_OPTIONAL
            added = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name is not None:
                added.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()  # a private pool: no clash with tritonclient's inference.* symbols
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.ModelConfigResponse"))


def _parse_labels(declared: str, who: str) -> tuple[str, ...]:
    """The ``labels`` parameter: a JSON list of distinct strings."""
    try:
        labels = json.loads(declared)
    except ValueError:
        labels = None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels) \
            or len(set(labels)) != len(labels):
        raise ModelError(f"the cloud model {who} declares parameter {LABELS_PARAMETER!r} = {declared[:80]!r}; "
                         "expected a JSON list of distinct label strings")
    return tuple(labels)


def _refuse_unknown_model(exc: grpc.RpcError, model_name: str, target: str) -> None:
    """A server that answers but has no such model: ModelError (a wrong --cloud-model), not an outage."""
    if isinstance(exc, grpc.Call) and exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        raise ModelError(f"the cloud server at {target} has no model {model_name!r}: {exc.details()}") from exc


_SCORE_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


@dataclass(frozen=True)
class V2TensorNames:
    """The names of the remote v2 model's tensors (:class:`KServeV2CloudClient` describes them)."""

    input: str = "text"
    label: str = "label"
    score: str = "score"


class KServeV2CloudClient:
    """An Open Inference Protocol v2 model (Triton, KServe, edgekit's v2 endpoint) as the cloud model.

    The contract the remote model must meet (names configurable: ``tensors=V2TensorNames(...)``;
    ``serve-cloud --engine triton`` serves exactly this, see README "The cloud model on Triton"):

    * input ``text``: BYTES, UTF-8 texts, sent in ``contents.bytes_contents`` with shape ``[N]``, or
      ``[N, 1]`` when the model's metadata declares the input ``[-1, 1]`` (a batching Triton model);
    * output ``label``: BYTES, ``N`` elements (shape ``[N]`` or ``[N, 1]``), UTF-8 labels;
    * output ``score``: FP32 (or FP64), ``N`` elements, the probability of that label;
    * the label vocabulary, for the start-up check (``expect_labels``): a Triton model config's
      ``parameters`` entry ``labels`` holding a JSON list of strings (read with Triton's ModelConfig
      RPC, whose ``max_batch_size`` also splits larger requests); else an edgekit server's GetModelInfo.

    Outputs may come back in ``raw_output_contents`` (Triton's habit) or typed ``contents``.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        *,
        model_version: str = "",
        tensors: V2TensorNames = V2TensorNames(),
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.model_name = model_name
        self._metadata = bearer_metadata(token)
        self._rank: int | None = None  # of the input tensor, from the model's metadata (first call)
        self._max_batch = 0  # the model's max_batch_size, from its Triton config (0: unknown or no limit)
        self._model_version = model_version
        self._tensors = tensors
        self._channel = _channel(target, credentials, max_message_bytes)
        self._stub = v2_grpc.GRPCInferenceServiceStub(self._channel)
        self._model_config = self._channel.unary_unary(
            _MODEL_CONFIG_METHOD, request_serializer=v2.ModelMetadataRequest.SerializeToString,
            response_deserializer=_model_config_response_class().FromString,
        )
        self._labels = _LabelCheck(f"the cloud model {model_name!r} at {target}", self._cloud_labels)

    def expect_labels(self, labels: Sequence[str], timeout_s: float) -> bool:
        """The label check (see the module docstring): ModelError if they differ or the model declares
        none (or does not exist), False if the cloud cannot be asked now (asked before the first call)."""
        return self._labels.expect(labels, timeout_s)

    def _cloud_labels(self, timeout_s: float) -> tuple[str, ...] | None:
        """The labels the model declares: its Triton config's ``labels`` parameter, else (a server
        without Triton's ModelConfig RPC) an edgekit server's GetModelInfo; None if neither says."""
        request = v2.ModelMetadataRequest(name=self.model_name, version=self._model_version)
        with _as_cloud_errors(self.target):
            try:
                config = self._model_config(request, timeout=timeout_s, metadata=self._metadata).config
            except grpc.RpcError as exc:
                if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    _refuse_unknown_model(exc, self.model_name, self.target)
                    raise
                return self._edgekit_labels(timeout_s)
            self._max_batch = max(0, config.max_batch_size)
            declared = {p.key: p.value.string_value for p in config.parameters}.get(LABELS_PARAMETER)
            return None if declared is None else _parse_labels(declared, f"{self.model_name!r} at {self.target}")

    def _edgekit_labels(self, timeout_s: float) -> tuple[str, ...] | None:
        try:
            info = ek_grpc.EdgeClassifierStub(self._channel).GetModelInfo(
                ek.GetModelInfoRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        if info.name != self.model_name:
            raise ModelError(f"the edgekit server at {self.target} serves {info.name!r}, not {self.model_name!r}")
        return tuple(info.labels)

    def _batch_shape(self, n: int, timeout_s: float) -> list[int]:
        """``[n]``, or ``[n, 1]`` for a model whose metadata declares the input as ``[-1, 1]`` (what
        Triton reports for a batching model with one string per sample, and then requires: a
        PyTriton ``Tensor(dtype=bytes, shape=(1,))``). Asked once; if the metadata cannot be read,
        ``[n]`` is sent and the server's answer decides."""
        if self._rank is None:
            try:
                meta = self._stub.ModelMetadata(
                    v2.ModelMetadataRequest(name=self.model_name, version=self._model_version),
                    timeout=timeout_s / 2, metadata=self._metadata,  # half: the call itself needs time too
                )
                shapes = [list(t.shape) for t in meta.inputs if t.name == self._tensors.input]
                self._rank = 2 if shapes and len(shapes[0]) == 2 else 1
            except grpc.RpcError:
                return [n]  # ask again next time
        return [n, 1] if self._rank == 2 else [n]

    def classify(self, texts: Sequence[str], timeout_s: float) -> list[tuple[str, float]]:
        """Ask the model, in requests of at most its max_batch_size texts (when known), within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        answers: list[tuple[str, float]] = []
        with _as_cloud_errors(self.target):
            self._labels.before_call(timeout_s)
            step = self._max_batch or max(len(texts), 1)
            for start in range(0, len(texts), step):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CloudUnavailable(f"cloud model at {self.target} failed: DEADLINE_EXCEEDED: "
                                           f"{len(texts)} texts in requests of {step} took too long")
                answers += self._infer(texts[start:start + step], left)
        return answers

    def _infer(self, texts: Sequence[str], timeout_s: float) -> list[tuple[str, float]]:
        request = v2.ModelInferRequest(
            model_name=self.model_name,
            model_version=self._model_version,
            inputs=[
                v2.ModelInferRequest.InferInputTensor(
                    name=self._tensors.input,
                    datatype="BYTES",
                    shape=self._batch_shape(len(texts), timeout_s),
                    contents=v2.InferTensorContents(bytes_contents=[t.encode("utf-8") for t in texts]),
                )
            ],
            outputs=[
                v2.ModelInferRequest.InferRequestedOutputTensor(name=self._tensors.label),
                v2.ModelInferRequest.InferRequestedOutputTensor(name=self._tensors.score),
            ],
        )
        response = self._stub.ModelInfer(request, timeout=timeout_s, metadata=self._metadata)
        labels = [b.decode("utf-8") for b in self._output(response, self._tensors.label, len(texts))]
        scores = self._output(response, self._tensors.score, len(texts))
        return [(label, float(score)) for label, score in zip(labels, scores)]

    def close(self) -> None:
        self._channel.close()

    @staticmethod
    def _output(response: v2.ModelInferResponse, name: str, n: int) -> list[Any]:
        """The elements of one output tensor, whichever of the two encodings the server chose."""
        for index, tensor in enumerate(response.outputs):
            if tensor.name != name:
                continue
            raw = response.raw_output_contents[index] if index < len(response.raw_output_contents) else None
            if tensor.datatype == "BYTES":
                values: list[Any] = decode_bytes_tensor(raw) if raw is not None else list(tensor.contents.bytes_contents)
            elif tensor.datatype in _SCORE_DTYPES:
                if raw is not None:
                    values = np.frombuffer(raw, dtype=_SCORE_DTYPES[tensor.datatype]).tolist()
                else:
                    values = list(tensor.contents.fp32_contents or tensor.contents.fp64_contents)
            else:
                raise ValueError(f"output {name!r} has datatype {tensor.datatype}, expected BYTES, FP32 or FP64")
            if len(values) != n:
                raise ValueError(f"output {name!r} has {len(values)} elements for {n} texts")
            return values
        raise ValueError(f"the response has no output named {name!r}")
