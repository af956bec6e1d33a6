"""Calls the shop's inventory over gRPC from Python, as a client outside Rust would.

Usage: grpc_inventory.py HOST:PORT PROTO_DIR TOKEN SKU

The stubs of inventory.proto (the committed contract) are generated at run time with
grpcio-tools into a temporary directory; the health service comes with
grpcio-health-checking. Prints one JSON line: the health statuses (the whole server and
inventory.v1.Inventory), the status of GetProducts without a token, and the products
GetProducts answers with the token for SKU and an unknown SKU.
"""

import importlib
import json
import os
import sys
import tempfile

PIP = "pip install grpcio grpcio-health-checking grpcio-tools"

try:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_tools import protoc
except ImportError as missing:
    sys.stderr.write(
        f"python's gRPC modules are missing ({missing}); install them with: {PIP}\n"
    )
    sys.exit(3)


def stubs(proto_dir):
    """inventory_pb2 and inventory_pb2_grpc, generated from PROTO_DIR/inventory.proto."""
    out = tempfile.mkdtemp(prefix="inventory-stubs-")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_dir, "inventory.proto"),
        ]
    )
    if rc != 0:
        sys.stderr.write(f"grpc_tools.protoc failed on inventory.proto ({rc})\n")
        sys.exit(4)
    sys.path.insert(0, out)
    return importlib.import_module("inventory_pb2"), importlib.import_module(
        "inventory_pb2_grpc"
    )


def main():
    target, proto_dir, token, sku = sys.argv[1:5]
    pb2, pb2_grpc = stubs(proto_dir)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.ServingStatus.Name
        server = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        service = health.Check(
            health_pb2.HealthCheckRequest(service="inventory.v1.Inventory"), timeout=5
        )
        inventory = pb2_grpc.InventoryStub(channel)
        request = pb2.GetProductsRequest(skus=[sku, "no-such-product"])
        try:
            inventory.GetProducts(request, timeout=5)
            without_token = "OK"
        except grpc.RpcError as refused:
            without_token = refused.code().name
        answer = inventory.GetProducts(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=5
        )
        print(
            json.dumps(
                {
                    "health": serving(server.status),
                    "inventory_health": serving(service.status),
                    "without_token": without_token,
                    "products": [
                        {
                            "sku": p.sku,
                            "name": p.name,
                            "price_cents": p.price_cents,
                            "stock": p.stock,
                        }
                        for p in answer.products
                    ],
                }
            )
        )


if __name__ == "__main__":
    main()
