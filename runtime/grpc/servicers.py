"""Thin gRPC servicers: protobuf in, :class:`~edgekit.runtime.dataplane.DataPlane` call, protobuf out.

Two services share one data plane: edgekit's own ``edgekit.v1.EdgeClassifier`` and the
Open Inference Protocol's ``inference.GRPCInferenceService`` (what Triton and KServe
clients speak). Servicers raise :mod:`edgekit.errors` exceptions; :class:`ErrorInterceptor`
turns them into status codes in one place.

The v2 model has one input and three outputs:

* ``text``: BYTES, shape ``[N]`` or ``[N, 1]``, UTF-8, in typed ``contents.bytes_contents``
  or in ``raw_input_contents`` (4-byte little-endian length prefix per element);
* ``label`` (BYTES), ``score`` (FP32) and ``route`` (BYTES: EDGE, CLOUD,
  EDGE_CLOUD_FAILED), shaped like the input, returned raw if the input came raw (what
  tritonclient expects) and typed otherwise. The response ``parameters`` repeat the routes
  and the edge scores as JSON lists (``routes``, ``edge_scores``).

Request parameters ``allow_cloud`` (bool) and ``threshold`` (double, or a string holding a
number) map to the classify options.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from edgekit import __version__
from edgekit.errors import DeadlineExceeded, EdgekitError, InvalidInput, Overloaded
from edgekit.runtime.dataplane import make_options
from edgekit.runtime.deferred import run_deferred
from edgekit.runtime.grpc import decode_bytes_tensor, encode_bytes_tensor, model_info_to_pb, refusing_handler
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc
from edgekit.runtime.types import ModelInfo, Prediction, Route

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.dataplane import DataPlane

__all__ = [
    "AdminServicer",
    "Admission",
    "EdgeClassifierServicer",
    "ErrorInterceptor",
    "InferenceServicer",
    "SERVICE_NAMES",
    "error_status",
]

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    ek.DESCRIPTOR.services_by_name["EdgeClassifier"].full_name,
    v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    ek.DESCRIPTOR.services_by_name["EdgeAdmin"].full_name,
)

_ROUTE_TO_PB = {Route.EDGE: ek.ROUTE_EDGE, Route.CLOUD: ek.ROUTE_CLOUD, Route.EDGE_CLOUD_FAILED: ek.ROUTE_EDGE_CLOUD_FAILED}


class EdgeClassifierServicer(ek_grpc.EdgeClassifierServicer):
    """edgekit.v1.EdgeClassifier."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def Classify(self, request: ek.ClassifyRequest, context: grpc.ServicerContext) -> ek.ClassifyResponse:
        return self._classify(request, context)

    def ClassifyStream(
        self, request_iterator: Iterator[ek.ClassifyRequest], context: grpc.ServicerContext
    ) -> Iterator[ek.ClassifyResponse]:
        for request in request_iterator:
            yield self._classify(request, context)

    def GetModelInfo(self, request: ek.GetModelInfoRequest, context: grpc.ServicerContext) -> ek.ModelInfoResponse:
        return model_info_to_pb(self._dataplane.model_info())

    def _classify(self, request: ek.ClassifyRequest, context: grpc.ServicerContext) -> ek.ClassifyResponse:
        options = make_options(  # positional: a cache hit on keywords costs more (issue 12)
            request.top_k or 1,
            request.allow_cloud if request.HasField("allow_cloud") else True,
            request.threshold if request.HasField("threshold") else None,
        )
        predictions = self._dataplane.classify(
            list(request.texts), options, time_remaining_s=context.time_remaining()
        )
        response = ek.ClassifyResponse(request_id=request.request_id)
        for p in predictions:
            _add_prediction(response.predictions, p)
        return response


class AdminServicer(ek_grpc.EdgeAdminServicer):
    """edgekit.v1.EdgeAdmin: on only when the server checks bearer tokens (AuthInterceptor)."""

    def __init__(self, reload: Callable[[], ModelInfo], *, enabled: bool) -> None:
        self._reload = reload
        self._enabled = enabled

    def Reload(self, request: ek.ReloadRequest, context: grpc.ServicerContext) -> ek.ModelInfoResponse:
        if not self._enabled:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "the admin API is off: start the server with --auth-token-file (or reload it with SIGHUP)")
        return model_info_to_pb(self._reload())


def _add_prediction(into: Any, p: Prediction) -> None:
    """Append ``p`` to a repeated Prediction field, built in place: a message passed to a repeated
    field (``ClassifyResponse(predictions=[...])``) is copied, and on the request path the copies
    cost more than the fields (issue 12)."""
    pb = into.add(
        label=p.label,
        score=p.score,
        route=_ROUTE_TO_PB[p.route],
        edge_score=p.edge_score,
        latency_ms=p.latency_ms,
        model_name=p.model_name,
        model_version=p.model_version,
    )
    for label, score in p.top_k:
        pb.top_k.add(label=label, score=score)


_INPUT = "text"
_OUTPUTS = {"label": "BYTES", "score": "FP32", "route": "BYTES"}
_Tensor = v2.ModelMetadataResponse.TensorMetadata


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService (Open Inference Protocol v2) for the one model served."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._dataplane.ready)

    def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.ServicerContext) -> v2.ModelReadyResponse:
        self._model(request.name, request.version, context)
        return v2.ModelReadyResponse(ready=self._dataplane.ready)

    def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="edgekit", version=__version__)

    def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ModelMetadataResponse:
        info = self._model(request.name, request.version, context)
        return v2.ModelMetadataResponse(
            name=info.name,
            versions=[info.version],
            platform=f"edgekit_{info.backend}",
            inputs=[_Tensor(name=_INPUT, datatype="BYTES", shape=[-1])],
            outputs=[_Tensor(name=name, datatype=dtype, shape=[-1]) for name, dtype in _OUTPUTS.items()],
        )

    def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.ServicerContext) -> v2.ModelInferResponse:
        info = self._model(request.model_name, request.model_version, context)
        shape, texts = _input_texts(request)
        wanted = [o.name for o in request.outputs] or list(_OUTPUTS)
        unknown = [name for name in wanted if name not in _OUTPUTS]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model has {list(_OUTPUTS)}")
        options = make_options(
            allow_cloud=_parameter(request.parameters, "allow_cloud", bool, True),
            threshold=_parameter(request.parameters, "threshold", float, None),
        )
        predictions = self._dataplane.classify(texts, options, time_remaining_s=context.time_remaining())

        columns: dict[str, list[Any]] = {
            "label": [p.label.encode("utf-8") for p in predictions],
            "score": [p.score for p in predictions],
            "route": [p.route.value.encode("ascii") for p in predictions],
        }
        raw = len(request.raw_input_contents) > 0
        response = v2.ModelInferResponse(
            model_name=info.name,
            model_version=info.version,
            id=request.id,
            parameters={
                "routes": v2.InferParameter(string_param=json.dumps([p.route.value for p in predictions])),
                "edge_scores": v2.InferParameter(string_param=json.dumps([p.edge_score for p in predictions])),
            },
        )
        for name in wanted:
            tensor = response.outputs.add(name=name, datatype=_OUTPUTS[name], shape=shape)
            values = columns[name]
            if raw:
                response.raw_output_contents.append(
                    encode_bytes_tensor(values) if name != "score" else np.asarray(values, "<f4").tobytes()
                )
            elif name == "score":
                tensor.contents.fp32_contents.extend(values)
            else:
                tensor.contents.bytes_contents.extend(values)
        return response

    def _model(self, name: str, version: str, context: grpc.ServicerContext) -> ModelInfo:
        """The served model's info if the request names it, else NOT_FOUND."""
        info = self._dataplane.model_info()
        if name != info.name or version not in ("", info.version):
            asked = f"{name!r}" + (f" version {version!r}" if version else "")
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {asked} not found; this server serves {info.name!r} version {info.version!r}",
            )
        return info


def _input_texts(request: v2.ModelInferRequest) -> tuple[list[int], list[str]]:
    """The texts of the one BYTES input, from typed or raw contents, with its shape."""
    names = [t.name for t in request.inputs]
    if names != [_INPUT]:
        raise InvalidInput(f"expected one input named {_INPUT!r} (BYTES, shape [N] or [N, 1]), got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {_INPUT!r} must be BYTES, got {tensor.datatype}")
    shape = list(tensor.shape)
    if len(shape) not in (1, 2) or shape[0] < 0 or shape[1:] not in ([], [1]):
        raise InvalidInput(f"input {_INPUT!r} has shape {shape}; expected [N] or [N, 1]")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for one input")
        try:
            elements = decode_bytes_tensor(request.raw_input_contents[0])
        except ValueError as exc:
            raise InvalidInput(f"input {_INPUT!r}: {exc}") from exc
    else:
        elements = list(tensor.contents.bytes_contents)
    if len(elements) != shape[0]:
        raise InvalidInput(f"input {_INPUT!r} has shape {shape} but {len(elements)} elements")
    texts = []
    for i, element in enumerate(elements):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{_INPUT}[{i}] is not valid UTF-8") from exc
    return shape, texts


def _parameter(parameters: Any, name: str, kind: type, default: Any) -> Any:
    """A request parameter as ``kind`` (bool or float), whichever InferParameter field carries it."""
    if name not in parameters:
        return default
    param = parameters[name]
    choice = param.WhichOneof("parameter_choice")
    value = getattr(param, choice) if choice else None
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and choice in ("double_param", "int64_param", "uint64_param", "string_param"):
        try:
            return float(value)
        except ValueError:
            pass
    raise InvalidInput(f"parameter {name!r} must be a {kind.__name__}, got {choice}={value!r}")


class ErrorInterceptor(grpc.ServerInterceptor):
    """Map exceptions from edgekit's servicers to gRPC status codes, in one place; and, given
    ``admission``, refuse calls beyond the in-flight bound (see :class:`Admission`).

    EdgekitError subclasses carry their code (``grpc_status``) and a message meant for the
    client. Anything else is a bug: logged with its traceback and answered INTERNAL without
    details, and the server keeps serving. Aborts a servicer chose itself pass through.
    Only ``services`` are wrapped: grpc's health servicer relies on attributes of its own
    handler functions that a wrapper would hide. Wrapped handlers are built once per method
    (the request path is measured in microseconds: issue 12).
    """

    def __init__(self, services: tuple[str, ...] = SERVICE_NAMES,
                 admission: Admission | None = None) -> None:
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._admission = admission
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefixes):
            return handler
        if self._admission is not None:
            refused = self._admission.refusal(handler)
            if refused is not None:
                return refused
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        io = {"request_deserializer": _tolerant(handler.request_deserializer),
              "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            wrapped = grpc.unary_unary_rpc_method_handler(_guard_unary(handler.unary_unary, method), **io)
        elif handler.stream_stream:
            wrapped = grpc.stream_stream_rpc_method_handler(_guard_stream(handler.stream_stream, method), **io)
        else:
            return handler  # edgekit's services have no other kind of method
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class _Malformed:
    """Stands for a request message that did not parse; the guard answers it INVALID_ARGUMENT."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns :class:`_Malformed` instead of raising: grpcio would answer a
    parse error INTERNAL ("Exception deserializing request!"), but bad bytes are the client's fault."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return _Malformed(f"malformed request message ({len(data)} bytes): {exc}")

    return parse


def _well_formed(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidInput(request.reason)
    return request


def _guard_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(_well_formed(request), context)
        except Exception as exc:
            _abort(context, exc, method)

    return guarded


def _guard_stream(behavior: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
    def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            for response in behavior((_well_formed(r) for r in requests), context):
                yield response
                run_deferred(close=False)  # a stream's call lasts: each response's bookkeeping now
        except Exception as exc:
            _abort(context, exc, method)

    return guarded


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """End the RPC with the status ``exc`` maps to (``context.abort`` raises)."""
    if not isinstance(exc, EdgekitError) and context.code() not in (None, grpc.StatusCode.OK):
        raise exc  # the servicer aborted with a status of its choosing
    context.abort(*error_status(exc, method))


def error_status(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and details an exception from a servicer ends its RPC with, logged: an
    :class:`~edgekit.errors.EdgekitError` its own code and message, anything else (a bug) INTERNAL
    without details, its traceback in the log. Shared by :class:`ErrorInterceptor` and the fast
    lane (:mod:`edgekit.runtime.grpc.lane`)."""
    if isinstance(exc, EdgekitError):
        code = getattr(grpc.StatusCode, exc.grpc_status, grpc.StatusCode.INTERNAL)
        # refusals under load are counted in /metrics; a line each would flood the log when it matters
        level = logging.DEBUG if isinstance(exc, (Overloaded, DeadlineExceeded)) else logging.INFO
        log.log(level, "event=rpc_error method=%s code=%s error=%s", method, code.name, exc)
        return code, str(exc)
    log.error("event=rpc_internal_error method=%s error=%r", method, exc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


class Admission:
    """The in-flight bound: refuse a call at once (RESOURCE_EXHAUSTED, with the reason) while
    ``limit`` RPCs already run or wait for a worker thread (``held()`` counts them), and tell
    ``on_refused``. The bounded, counted form of grpcio's ``maximum_concurrent_rpcs`` (which
    refuses without a hook for metrics); :class:`ErrorInterceptor` and the fast lane ask it for
    edgekit's services only, so health checks always pass (probes must see a busy server as alive)."""

    def __init__(self, held: Callable[[], int], limit: int, on_refused: Callable[[str], None]) -> None:
        self._held = held
        self._limit = limit
        self._on_refused = on_refused

    def reason(self) -> str | None:
        """Why the server refuses a call now (counted as refused), or None if it takes it."""
        held = self._held()  # no lock: two calls accepted at once (by gRPC's thread and the lane's) may both pass
        if held < self._limit:
            return None
        reason = (f"the server is at capacity: {held} calls running or waiting for a thread, at most "
                  f"{self._limit} (--max-inflight); retry with backoff")
        self._on_refused(reason)
        return reason

    def refusal(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        """A refusing handler if the server is full, else None."""
        reason = self.reason()
        return None if reason is None else refusing_handler(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
