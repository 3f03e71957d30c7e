"""Serve replicas on a loopback-only local Ray node listen on loopback too.

A local node started by :func:`pipeline.procs.init_ray` has the address 127.0.0.1, and
every Ray server of it binds there; Ray Serve's replicas still open their
inter-deployment gRPC server on ``[::]`` (hard-wired in Ray 2.60), which puts one port
per replica on every interface of the machine. Their processes inherit the node's
switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), so a replica can tell where it runs
and bind that server to 127.0.0.1, the address the node advertises for it anyway. On a
real cluster (KubeRay) nothing changes: other nodes must reach the replicas."""

from __future__ import annotations

import os
from typing import Any

from pipeline.procs import RAY_CLUSTER_SWITCH


def keep_replica_on_loopback() -> None:
    """Call in a deployment's constructor (Serve starts the replica's gRPC server right
    after it)."""
    if os.environ.get(RAY_CLUSTER_SWITCH) != "0":
        return
    # Ray offers no setting for this address: the one function that binds it is
    # wrapped, in this replica's process only.
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "loopback_only", False):
        return

    def bind_on_loopback(server: Any, address: str) -> Any:
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return bind(server, address)

    bind_on_loopback.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_on_loopback
