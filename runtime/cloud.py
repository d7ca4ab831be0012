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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import grpc
import numpy as np

from edgekit.errors import CloudUnavailable
from edgekit.runtime.grpc import decode_bytes_tensor
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc
from edgekit.runtime.security import bearer_metadata

__all__ = ["CloudClient", "EdgekitCloudClient", "KServeV2CloudClient", "V2TensorNames"]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@runtime_checkable
class CloudClient(Protocol):
    """A cloud model: one ``(label, score)`` per text, in order, or CloudUnavailable.

    ``classify`` must return or raise within about ``timeout_s`` (the gRPC clients pass it
    as the call's deadline) and be safe to call from several threads at once.
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

    def classify(self, texts: Sequence[str], timeout_s: float) -> list[tuple[str, float]]:
        request = ek.ClassifyRequest(texts=list(texts), top_k=1, allow_cloud=False)
        with _as_cloud_errors(self.target):
            response = self._stub.Classify(request, timeout=timeout_s, metadata=self._metadata)
            if len(response.predictions) != len(texts):
                raise ValueError(f"{len(response.predictions)} predictions for {len(texts)} texts")
        return [(p.label, float(p.score)) for p in response.predictions]

    def close(self) -> None:
        self._channel.close()


_SCORE_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


@dataclass(frozen=True)
class V2TensorNames:
    """The names of the remote v2 model's tensors (:class:`KServeV2CloudClient` describes them)."""

    input: str = "text"
    label: str = "label"
    score: str = "score"


class KServeV2CloudClient:
    """An Open Inference Protocol v2 model (Triton, KServe, edgekit's v2 endpoint) as the cloud model.

    The contract the remote model must meet (names configurable: ``tensors=V2TensorNames(...)``):

    * input ``text``: BYTES, shape ``[N]``, UTF-8 texts, sent in ``contents.bytes_contents``;
    * output ``label``: BYTES, ``N`` elements (shape ``[N]`` or ``[N, 1]``), UTF-8 labels;
    * output ``score``: FP32 (or FP64), ``N`` elements, the probability of that label.

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
        self._model_version = model_version
        self._tensors = tensors
        self._channel = _channel(target, credentials, max_message_bytes)
        self._stub = v2_grpc.GRPCInferenceServiceStub(self._channel)

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
        with _as_cloud_errors(self.target):
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
