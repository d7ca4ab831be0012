"""A small Python client for an edgekit server (``edgekit predict`` uses it).

Returns the runtime's own domain types (:class:`~edgekit.runtime.types.Prediction`,
:class:`~edgekit.runtime.types.ModelInfo`) and raises :mod:`edgekit.errors` exceptions:
``INVALID_ARGUMENT`` becomes :class:`~edgekit.errors.InvalidInput` with the server's reason,
any other failure an :class:`~edgekit.errors.EdgekitError` naming the server and the code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgekit.errors import EdgekitError, InvalidInput
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import model_info_from_pb
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.security import bearer_metadata, channel_credentials
from edgekit.runtime.types import ModelInfo, Prediction, Route

__all__ = ["EdgeClient"]


class EdgeClient:
    """``with EdgeClient("127.0.0.1:50051") as client: client.classify(["where is my parcel?"])``"""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 5.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        token: str | None = None,
        tls: bool = False,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        """``token``: sent as ``authorization: Bearer <token>``. ``tls`` (implied by any ``tls_*``):
        verify the server against ``tls_ca`` (default: the system's roots); ``tls_cert`` and
        ``tls_key``: this client's certificate for mutual TLS."""
        self.target = target
        self.timeout_s = timeout_s
        self._metadata = bearer_metadata(token)
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls or tls_ca is not None or tls_cert is not None or tls_key is not None:
            self._channel = grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = ek_grpc.EdgeClassifierStub(self._channel)
        self._admin = ek_grpc.EdgeAdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def classify(
        self,
        texts: Sequence[str],
        top_k: int = 1,
        allow_cloud: bool = True,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """One Prediction per text, in order."""
        request = _request(texts, top_k, allow_cloud, threshold)
        response = self._call(self._stub.Classify, request)
        return [_prediction(p) for p in response.predictions]

    def classify_stream(
        self,
        batches: Iterable[Sequence[str]],
        top_k: int = 1,
        allow_cloud: bool = True,
        threshold: float | None = None,
    ) -> Iterator[list[Prediction]]:
        """Classify batches over one long-lived stream (no deadline): one list per batch, in order."""
        requests = (_request(texts, top_k, allow_cloud, threshold) for texts in batches)
        try:
            for response in self._stub.ClassifyStream(requests, metadata=self._metadata):
                yield [_prediction(p) for p in response.predictions]
        except grpc.RpcError as exc:
            raise _error(self.target, exc) from exc

    def model_info(self) -> ModelInfo:
        return model_info_from_pb(self._call(self._stub.GetModelInfo, ek.GetModelInfoRequest()))

    def reload(self) -> ModelInfo:
        """Ask the server to re-read its bundle and swap it in (needs the server's token); the model now served."""
        return model_info_from_pb(self._call(self._admin.Reload, ek.ReloadRequest()))

    def health(self, service: str = "") -> str:
        """The server's health status name: SERVING, NOT_SERVING, ... ("" asks about the whole server)."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self._channel.close()

    # The context-manager protocol, as in EdgeServer (which stops instead of closing): three
    # lines each, not worth a mixin shared by a client and a server that have nothing else in common.
    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(self.target, exc) from exc


def _request(texts: Sequence[str], top_k: int, allow_cloud: bool, threshold: float | None) -> ek.ClassifyRequest:
    if isinstance(texts, str):
        raise InvalidInput("texts must be a list of strings, got a single string")
    request = ek.ClassifyRequest(texts=list(texts), top_k=top_k, allow_cloud=allow_cloud)
    if threshold is not None:
        request.threshold = threshold
    return request


def _prediction(p: ek.Prediction) -> Prediction:
    return Prediction(
        label=p.label,
        score=p.score,
        top_k=tuple((pair.label, pair.score) for pair in p.top_k),
        route=Route(ek.Route.Name(p.route).removeprefix("ROUTE_")),
        edge_score=p.edge_score,
        latency_ms=p.latency_ms,
        model_name=p.model_name,
        model_version=p.model_version,
    )


def _error(target: str, exc: grpc.RpcError) -> EdgekitError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    return EdgekitError(f"edgekit server at {target}: {code.name}: {details}")
