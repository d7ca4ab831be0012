"""The gRPC layer of the edge runtime.

``edgekit.proto`` (edgekit's own API) and ``grpc_predict_v2.proto`` (the Open Inference
Protocol v2 that KServe and Triton speak) with their generated code (``regenerate.sh``),
and the thin servicers in :mod:`edgekit.runtime.grpc.servicers`.

The two BYTES helpers below are the OIP v2 wire format of BYTES tensors in
``raw_input_contents``/``raw_output_contents`` (each element: its length as a 4-byte
little-endian unsigned integer, then its bytes). Both the v2 servicer and the KServe cloud
client need them, so they live here rather than in either; so do the two directions of the
``ModelInfo`` ↔ ``edgekit.v1.ModelInfoResponse`` mapping, which the servicer and
:class:`~edgekit.runtime.client.EdgeClient` share.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from edgekit.runtime.types import ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.grpc import edgekit_pb2

__all__ = [
    "decode_bytes_tensor",
    "encode_bytes_tensor",
    "model_info_from_pb",
    "model_info_to_pb",
    "refusing_handler",
]

_LENGTH = struct.Struct("<I")


def encode_bytes_tensor(elements: Iterable[bytes]) -> bytes:
    """Serialise BYTES elements the way tritonclient and Triton expect raw contents."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def decode_bytes_tensor(raw: bytes) -> list[bytes]:
    """Split raw BYTES contents into elements; ValueError if the buffer is malformed."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise ValueError(f"BYTES tensor truncated inside a length prefix at byte {offset}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise ValueError(f"BYTES element {len(elements)} claims {length} bytes, {len(raw) - offset} remain")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def refusing_handler(handler: Any, code: Any, details: str) -> Any:
    """A grpc method handler of the same kind as ``handler`` that ends the call with ``code`` (a
    ``grpc.StatusCode``) and ``details``, its request unread: what interceptors return to refuse."""
    import grpc

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


# ModelInfo fields that edgekit.v1.ModelInfoResponse carries under the same name and type;
# labels (tuple ↔ repeated) and summary (dict ↔ summary_json) are converted by hand.
_MODEL_INFO_FIELDS = ("name", "version", "format", "precision", "backend", "max_length", "temperature", "threshold")


def model_info_to_pb(info: ModelInfo) -> edgekit_pb2.ModelInfoResponse:
    """What GetModelInfo and Reload answer."""
    from edgekit.runtime.grpc import edgekit_pb2

    return edgekit_pb2.ModelInfoResponse(
        **{name: getattr(info, name) for name in _MODEL_INFO_FIELDS},
        labels=list(info.labels),
        summary_json=json.dumps(info.summary, sort_keys=True),
    )


def model_info_from_pb(response: edgekit_pb2.ModelInfoResponse) -> ModelInfo:
    """The inverse of :func:`model_info_to_pb` (an empty ``summary_json`` is an empty summary)."""
    return ModelInfo(
        **{name: getattr(response, name) for name in _MODEL_INFO_FIELDS},
        labels=tuple(response.labels),
        summary=json.loads(response.summary_json) if response.summary_json else {},
    )
