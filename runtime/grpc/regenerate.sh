#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC Python code (*_pb2.py, *_pb2_grpc.py, *.pyi)
# from the .proto files beside this script:
#
#     PYTHON=.venv/bin/python runtime/grpc/regenerate.sh
#
# protoc names generated imports after the path a .proto has under its include root, so
# the protos are compiled as edgekit/runtime/grpc/*.proto from a staging root that links
# that path to this folder. The generated code then imports
# `from edgekit.runtime.grpc import edgekit_pb2` (never a top-level `edgekit_pb2`), and
# the descriptors register under names that cannot collide with another package's
# `edgekit.proto`. No post-editing of generated files.
#
# The gencode fixes the minimum runtimes: protobuf >= the "Protobuf Python Version" in
# the *_pb2.py headers and grpcio >= GRPC_GENERATED_VERSION in *_pb2_grpc.py. We
# generate with grpcio-tools 1.81.x (protobuf 6.x gencode) so the code loads under both
# protobuf 6 (which tritonclient[grpc] requires) and protobuf 7.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="$(command -v "${PYTHON:-python3}")"
case "$python" in /*) ;; *) python="$PWD/$python" ;; esac  # absolute: the script changes directory
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage/src/edgekit/runtime" "$stage/out"
ln -s "$here" "$stage/src/edgekit/runtime/grpc"
cd "$stage/src"
"$python" -m grpc_tools.protoc -I . \
    --python_out="$stage/out" --pyi_out="$stage/out" --grpc_python_out="$stage/out" \
    edgekit/runtime/grpc/edgekit.proto edgekit/runtime/grpc/grpc_predict_v2.proto
cp "$stage"/out/edgekit/runtime/grpc/*_pb2*.py* "$here"/
grep -h "Protobuf Python Version" "$here"/*_pb2.py | sort -u
grep -h "^GRPC_GENERATED_VERSION" "$here"/*_pb2_grpc.py | sort -u
