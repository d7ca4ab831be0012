"""The fast lane: the unary classify calls served straight from gRPC's completion queue.

grpcio's synchronous server runs each call through Python machinery made for every kind of RPC:
its one polling thread takes the new call and hands it to a pool thread, which asks for the
request message and sleeps on a condition until the polling thread has received it and wakes it
again; interceptors and the servicer context are built around each call; the answer goes out in
a third step. At one client every hand-over wakes a sleeping thread on cold caches. Measured on
the demo ``onnx-int8`` bundle at one client (issue 12, session 14, 1000 interleaved rounds):
the same bare echo answered 0.25-0.48 ms faster served from a loop on the completion queue than
from ``grpc.server``, and the same bare model server 0.28-0.59 ms faster; ``grpc.aio`` measured no
faster than ``grpc.server`` (sessions 9-10).

Here :class:`FastLane` registers ``Classify`` and the Open Inference Protocol's ``ModelInfer``
with gRPC's C core on a completion queue of its own (``grpc._cython.cygrpc``, the binding grpcio's
own servers are built on) and polls it with two threads. The thread that receives a request runs
it at once when nothing else is running (the kiosk's case: no hand-over at all); otherwise it
hands the call to the server's worker pool and goes back to polling, so that under load calls run
side by side and form micro-batches as before, and one polling thread is always free to accept
(and, at the in-flight bound, to refuse) new calls. Everything else (health, reflection, the
admin API, ``ClassifyStream``, the other v2 methods) stays on ``grpc.server``.

The lane answers as the interceptors would: a bearer token checked
(:func:`~edgekit.runtime.security.auth_refusal`), the in-flight bound (:class:`Admission`, counting
the lane's calls and the pool's), a malformed request INVALID_ARGUMENT, errors mapped by
:func:`~edgekit.runtime.grpc.servicers.error_status`, bookkeeping after the response
(:mod:`edgekit.runtime.deferred`). The servicers get a context with what they use of
``grpc.ServicerContext`` (:class:`LaneContext`).

Hand-written: no library serves Python handlers from gRPC's C core without grpcio's per-call
machinery. It relies on grpcio internals (``grpc._cython.cygrpc`` and ``grpc.Server._cy_server``):
:func:`lane_available` checks them, the server falls back to ``grpc.server`` alone (with a warning)
when they are missing, ``edgekit serve --no-fast-lane`` turns the lane off, and the test suite runs
the server's behaviour both ways.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from edgekit.runtime.deferred import run_deferred, start_call
from edgekit.runtime.grpc.servicers import error_status

from edgekit.errors import ConfigError, InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.grpc.pool import LifoPool
    from edgekit.runtime.grpc.servicers import Admission

try:
    from grpc._cython import cygrpc
except ImportError:  # pragma: no cover - grpcio always ships it today
    cygrpc = None

__all__ = ["LANE_METHODS", "FastLane", "LaneContext", "lane_available"]

log = logging.getLogger(__name__)

# the unary methods the lane serves: the ones a kiosk calls once per query
LANE_METHODS = frozenset({"/edgekit.v1.EdgeClassifier/Classify", "/inference.GRPCInferenceService/ModelInfer"})

_POLLERS = 2  # one may run a call while the other accepts (module docstring)
_POLL_S = 1.0  # an idle poller's wait per poll (it ends at the queue's shutdown event)
_CODES = {code: code.value[0] for code in grpc.StatusCode}


def lane_available() -> str | None:
    """Why this grpcio cannot carry the fast lane, or None if it can."""
    if cygrpc is None:
        return "grpcio has no grpc._cython.cygrpc"
    needed = {"CompletionQueue": ("poll", "shutdown"), "Server": ("register_method", "request_registered_call",
                                                                  "register_completion_queue")}
    for name, methods in needed.items():
        kind = getattr(cygrpc, name, None)
        missing = [m for m in methods if not hasattr(kind, m)]
        if kind is None or missing:
            return f"grpcio's cygrpc.{name} lacks {missing or 'itself'}"
    try:
        from grpc._server import _Server
    except ImportError:
        return "grpcio has no grpc._server"
    if not hasattr(_Server, "add_registered_method_handlers"):
        return "grpcio's server has no registered methods"
    return None


class LaneContext:
    """What the lane methods' servicers use of ``grpc.ServicerContext``: ``time_remaining`` and
    ``abort`` (raises)."""

    __slots__ = ("_deadline",)

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def time_remaining(self) -> float:
        return max(self._deadline - time.time(), 0.0)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Method:
    """A lane method: its path, the servicer's behaviour and the (de)serializers, from the
    generated ``add_*Servicer_to_server``. It is also the tag of its new-call events."""

    __slots__ = ("path", "behavior", "parse", "serialize")

    def __init__(self, path: str, handler: grpc.RpcMethodHandler) -> None:
        if handler.unary_unary is None:
            raise ConfigError(f"the fast lane serves unary methods only; {path} is not one")
        self.path = path
        self.behavior = handler.unary_unary
        self.parse = handler.request_deserializer
        self.serialize = handler.response_serializer


class _Call:
    """A call accepted by the lane, waiting for its request message (the tag of that event)."""

    __slots__ = ("method", "call", "deadline", "metadata", "cancelled")

    def __init__(self, method: _Method, event: Any) -> None:
        self.method = method
        self.call = event.call
        self.deadline = event.call_details.deadline
        self.metadata = event.invocation_metadata
        self.cancelled = False  # the client cancelled it (learnt from its close event, as grpcio does)


class _Close:
    """The tag of a call's close event: it tells whether the client cancelled the call."""

    __slots__ = ("call",)

    def __init__(self, call: _Call) -> None:
        self.call = call


_SENT = "sent"  # the tag of a call's last batch: nothing left to do when it completes


class FastLane:
    """Serves :data:`LANE_METHODS` on ``server`` (a ``grpc.server`` not yet started) from a
    completion queue of its own. :meth:`add` the methods (through :meth:`registrar`), start the
    server, then :meth:`start` the lane; :meth:`stop` it after the server has stopped."""

    def __init__(self, server: grpc.Server, pool: LifoPool, *, authorize: Callable[[Any], str | None] | None = None,
                 admission: Admission | None = None) -> None:
        reason = lane_available()
        if reason is not None:
            raise ConfigError(f"the fast lane cannot run on this grpcio ({grpc.__version__}): {reason}")
        self._server = server
        self._core = server._cy_server  # type: ignore[attr-defined]
        self._cq = cygrpc.CompletionQueue()
        self._core.register_completion_queue(self._cq)
        self._pool = pool
        self._authorize = authorize
        self._admission = admission
        self._methods: dict[str, _Method] = {}
        self._lock = threading.Condition()
        self._held = 0  # calls accepted here and not handed to the pool or finished
        self._pooled = 0  # calls handed to the pool and not finished
        self._starting = 0  # batches being started: the queue must not shut under them
        self._closed = False  # the queue is (being) shut: no more batches may start on it
        self._alone = threading.Lock()  # held by the poller running a call itself
        self._threads: list[threading.Thread] = []

    @property
    def held(self) -> int:
        """Calls the lane has accepted and neither finished nor handed to the pool."""
        return self._held

    def add(self, path: str, handler: grpc.RpcMethodHandler) -> None:
        """Serve ``path`` (``/package.Service/Method``) with ``handler``'s unary behaviour."""
        if self._threads:
            raise RuntimeError("add methods before the lane starts")
        self._core.register_method(path)
        self._methods[path] = _Method(path, handler)

    def registrar(self) -> _Registrar:
        """What to pass a generated ``add_*Servicer_to_server`` instead of the server: the
        :data:`LANE_METHODS` come to the lane, the others go to the server."""
        return _Registrar(self._server, self)

    def start(self) -> None:
        """Ask for the first call of each method and start polling (the server has started)."""
        for method in self._methods.values():
            self._core.request_registered_call(self._cq, self._cq, method.path, method)
        for i in range(_POLLERS):
            thread = threading.Thread(target=self._poll, name=f"edgekit-lane_{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        """After the server has stopped (no new calls; those past its grace cancelled): wait up to
        ``timeout_s`` for the lane's calls to finish, then close the queue. A call still running
        after that (cancelled by the server) starts no batch on the closed queue: gRPC's C core
        aborts the process on a batch started there."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._held + self._pooled == 0, timeout_s):
                log.warning("event=lane_stop_timeout calls=%d", self._held + self._pooled)
            self._closed = True
            self._lock.wait_for(lambda: self._starting == 0)  # a batch start takes microseconds
        self._cq.shutdown()
        for thread in self._threads:  # they drain the queue and end at its shutdown event
            thread.join(timeout_s)

    def _start(self, call: Any, operations: tuple, tag: Any) -> None:
        """``call.start_server_batch(operations, tag)`` unless the queue is closed."""
        with self._lock:
            if self._closed:
                return
            self._starting += 1
        try:
            call.start_server_batch(operations, tag)
        finally:
            with self._lock:
                self._starting -= 1
                if not self._starting:
                    self._lock.notify_all()

    def _poll(self) -> None:
        cq = self._cq
        timeout, shutdown = cygrpc.CompletionType.queue_timeout, cygrpc.CompletionType.queue_shutdown
        while True:
            event = cq.poll(time.time() + _POLL_S)
            kind = event.completion_type
            if kind == timeout:
                continue
            if kind == shutdown:
                return
            tag = event.tag
            try:
                if type(tag) is _Call:
                    self._received(tag, event)
                elif type(tag) is _Method:
                    self._accept(tag, event)
                elif type(tag) is _Close:
                    tag.call.cancelled = event.batch_operations[0].cancelled()
            except Exception:  # a bug here must not stop the poller; the call gets INTERNAL if it can
                log.exception("event=lane_error tag=%s", type(tag).__name__)
                if type(tag) is _Call:
                    self._internal(tag)

    def _accept(self, method: _Method, event: Any) -> None:
        if not event.success:  # the server is shutting down: no more calls to ask for
            return
        try:
            self._core.request_registered_call(self._cq, self._cq, method.path, method)
        except Exception as exc:  # the server began shutting down meanwhile; this call is still served
            log.debug("event=lane_request_refused method=%s error=%r", method.path, exc)
        call = _Call(method, event)
        reason = self._authorize(call.metadata) if self._authorize is not None else None
        if reason is not None:
            self._end(call.call, grpc.StatusCode.UNAUTHENTICATED, reason, closing=True)
            return
        reason = self._admission.reason() if self._admission is not None else None
        if reason is not None:
            self._end(call.call, grpc.StatusCode.RESOURCE_EXHAUSTED, reason, closing=True)
            return
        with self._lock:
            self._held += 1
        try:
            # as grpcio: the close event comes early if the client cancels (a cancelled call is not run)
            self._start(call.call, (cygrpc.ReceiveCloseOnServerOperation(0),), _Close(call))
            self._start(call.call, (cygrpc.ReceiveMessageOperation(0),), call)
        except BaseException:
            self._release()
            self._internal(call)
            raise

    def _received(self, call: _Call, event: Any) -> None:
        """Run the call here if nothing else runs, else hand it to the pool; either way it is no
        longer the lane's to count once this returns."""
        deferred = False
        try:
            message = event.batch_operations[0].message() if event.success else None
            if message is None:  # the client went away, or closed without a message
                if event.success:
                    self._end(call.call, grpc.StatusCode.UNIMPLEMENTED,
                              f'"{call.method.path}" requires exactly one request message.')
                return
            if self._alone.acquire(blocking=False):
                try:
                    if self._pooled == 0:  # no other call running: run it here, no hand-over
                        start_call()
                        deferred = True
                        self._run(call, message)
                        return
                finally:
                    self._alone.release()
            with self._lock:
                self._pooled += 1
            try:
                self._pool.submit(self._run_pooled, call, message)  # counted in the pool's held from here
            except BaseException:
                self._finish_pooled()
                raise
        finally:
            # counted out before the bookkeeping: the client may send its next call as soon as the
            # answer is out, and must not find this one still counted against --max-inflight
            self._release()
            if deferred:
                run_deferred()  # the answer is on its way: now the call's bookkeeping

    def _run_pooled(self, call: _Call, message: bytes) -> None:
        try:
            self._run(call, message)
        except Exception:  # nobody reads the pool's future: say it here, and end the call
            log.exception("event=lane_error method=%s", call.method.path)
            self._internal(call)
        finally:
            self._finish_pooled()

    def _finish_pooled(self) -> None:
        with self._lock:
            self._pooled -= 1
            if not self._pooled:
                self._lock.notify_all()

    def _release(self) -> None:
        with self._lock:
            self._held -= 1
            if not self._held:
                self._lock.notify_all()

    def _run(self, call: _Call, message: bytes) -> None:
        if call.cancelled:  # the client is gone (grpcio skips such a call too)
            return
        method = call.method
        try:
            request = method.parse(message)
        except Exception as exc:  # protobuf's DecodeError: the client's fault, not INTERNAL
            reason = f"malformed request message ({len(message)} bytes): {exc}"
            self._end(call.call, *error_status(InvalidInput(reason), method.path))
            return
        try:
            answer = method.serialize(method.behavior(request, LaneContext(call.deadline)))
        except _Aborted as exc:
            self._end(call.call, exc.code, exc.details)
        except Exception as exc:
            self._end(call.call, *error_status(exc, method.path))
        else:
            self._start(call.call, (cygrpc.SendInitialMetadataOperation((), 0), cygrpc.SendMessageOperation(answer, 0),
                                    cygrpc.SendStatusFromServerOperation((), _CODES[grpc.StatusCode.OK], b"", 0)),
                        _SENT)

    def _end(self, call: Any, code: grpc.StatusCode, details: str, *, closing: bool = False) -> None:
        """End ``call`` with ``code`` and ``details``, no answer; ``closing`` for a call refused before
        the lane asked for its close event (as grpcio's refusal, the same batch asks for it)."""
        operations = (cygrpc.SendInitialMetadataOperation((), 0),
                      cygrpc.SendStatusFromServerOperation((), _CODES[code], details.encode("utf-8", "replace"), 0))
        self._start(call, operations + ((cygrpc.ReceiveCloseOnServerOperation(0),) if closing else ()), _SENT)

    def _internal(self, call: _Call) -> None:
        """End an accepted call INTERNAL after a bug in the lane, if it can still be ended."""
        with contextlib.suppress(Exception):  # it may have its status already
            self._end(call.call, grpc.StatusCode.INTERNAL, "internal error; see the server log")


class _Registrar:
    """Stands for the server in a generated ``add_*Servicer_to_server``: the lane's methods go to
    the lane, the service's others to the server (registered and generic, as the generated code
    would add them)."""

    def __init__(self, server: grpc.Server, lane: FastLane) -> None:
        self._server = server
        self._lane = lane

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the generated code adds the same methods as registered ones next: handled there

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        rest = {}
        for name, handler in handlers.items():
            path = f"/{service}/{name}"
            if path in LANE_METHODS:
                self._lane.add(path, handler)
            else:
                rest[name] = handler
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, rest),))
        self._server.add_registered_method_handlers(service, rest)
