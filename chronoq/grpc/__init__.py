"""The gRPC API (``chronoq[grpc]``): ``v1/chronoq.proto`` and its server, :mod:`.server`.

Nothing here is imported by ``import chronoq``: grpcio is an optional extra.
"""
