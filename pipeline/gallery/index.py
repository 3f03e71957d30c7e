"""Vector index of the face collections and how searches probe it.

The parameters are chosen by measurement (``facestream bench search``): recall@1 against
exact search must stay at least 0.99, since a missed enrolled face is a false "unknown".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymilvus import MilvusClient

VECTOR_FIELD = "embedding"


def index_params(client: MilvusClient, index_type: str) -> Any:
    params = client.prepare_index_params()
    extra: dict[str, Any] = {}
    if index_type == "IVF_FLAT":
        extra = {"nlist": 256}
    elif index_type == "HNSW":
        extra = {"M": 16, "efConstruction": 200}
    params.add_index(VECTOR_FIELD, index_type=index_type, metric_type="COSINE", params=extra)
    return params


def search_params(index_type: str) -> dict[str, Any]:
    # Generous probing: a missed enrolled face is a false "unknown", which costs more
    # than the extra milliseconds (bench.py measures recall with these settings).
    if index_type == "IVF_FLAT":
        return {"params": {"nprobe": 32}}
    if index_type == "HNSW":
        return {"params": {"ef": 128}}
    return {}
