"""The protocols the edge can speak to its cloud model, registered as :class:`~edgekit.registry.CloudProtocolSpec`.

A spec names its client class by import path, so ``edgekit serve --help`` lists the protocols
without importing grpc. A third protocol is a client class (the :class:`~edgekit.runtime.cloud.CloudClient`
protocol) and one spec here.
"""

from __future__ import annotations

from edgekit.registry import CLOUD_PROTOCOLS, CloudProtocolSpec, Registry

__all__ = ["EDGEKIT_V1", "KSERVE_V2", "load_cloud_protocols"]

EDGEKIT_V1 = CLOUD_PROTOCOLS.add_spec(CloudProtocolSpec(
    name="edgekit", client="edgekit.runtime.cloud:EdgekitCloudClient",
    description="another `edgekit serve-cloud` (edgekit.v1.EdgeClassifier)",
))
KSERVE_V2 = CLOUD_PROTOCOLS.add_spec(CloudProtocolSpec(
    name="kserve-v2", client="edgekit.runtime.cloud:KServeV2CloudClient",
    description="Triton/KServe ModelInfer (Open Inference Protocol v2)", needs_model_name=True,
    aliases=("oip-v2", "triton"),
))


def load_cloud_protocols() -> Registry[CloudProtocolSpec]:
    """CLOUD_PROTOCOLS, with the protocols above registered (importing this module did it)."""
    return CLOUD_PROTOCOLS
