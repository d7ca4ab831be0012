"""The kserve-v2 cloud client against a model that batches like Triton: its metadata declares the
text input as [-1, 1] and it refuses [N] (what tritonserver answers for a PyTriton
``Tensor(dtype=bytes, shape=(1,))`` with ``max_batch_size > 0``). Checked to fail with the client
always sending [N]."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from edgekit.runtime.cloud import KServeV2CloudClient
from edgekit.runtime.grpc import encode_bytes_tensor
from edgekit.runtime.grpc import grpc_predict_v2_pb2 as v2
from edgekit.runtime.grpc import grpc_predict_v2_pb2_grpc as v2_grpc

pytestmark = pytest.mark.e2e


class TritonLike(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.shapes: list[list[int]] = []

    def ModelMetadata(self, request, context):
        shape = [-1, 1] if self.rank == 2 else [-1]
        T = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(name=request.name, versions=["1"], platform="python",
                                        inputs=[T(name="text", datatype="BYTES", shape=shape)],
                                        outputs=[T(name="label", datatype="BYTES", shape=shape),
                                                 T(name="score", datatype="FP32", shape=shape)])

    def ModelInfer(self, request, context):
        shape = list(request.inputs[0].shape)
        self.shapes.append(shape)
        if len(shape) != self.rank:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected shape for input 'text', got {shape}")
        n = shape[0]
        response = v2.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="label", datatype="BYTES", shape=shape)
        response.outputs.add(name="score", datatype="FP32", shape=shape)
        response.raw_output_contents.append(encode_bytes_tensor([b"get_refund"] * n))
        response.raw_output_contents.append(b"\x00\x00\x80\x3f" * n)  # 1.0 as little-endian float32
        return response


@pytest.mark.parametrize("rank", [1, 2])
def test_the_client_sends_the_shape_the_model_declares(rank):
    servicer = TritonLike(rank)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = KServeV2CloudClient(f"127.0.0.1:{port}", "classifier")
    try:
        for _ in range(2):
            assert client.classify(["a", "b", "c"], timeout_s=5) == [("get_refund", 1.0)] * 3
        assert servicer.shapes == [[3, 1]] * 2 if rank == 2 else [[3]] * 2
    finally:
        client.close()
        server.stop(0)
