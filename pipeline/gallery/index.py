"""Vector index of the face collections and how searches probe it.

The parameters are chosen by measurement (``facestream bench search``; results and the
reasoning in ``pipeline/gallery/INDEX.md``): recall@1 against exact search must stay at
least 0.99, since a missed enrolled face is a false "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymilvus import MilvusClient

VECTOR_FIELD = "embedding"

# Build parameters per index type (FLAT and AUTOINDEX take none).
BUILD_PARAMS: dict[str, dict[str, int]] = {
    "IVF_FLAT": {"nlist": 256},
    "HNSW": {"M": 16, "efConstruction": 200},
}
# Search parameters per index type. HNSW ef=96: at 100k faces recall@1 was 1.000 from
# ef=64 when 5 faces were asked for, but the gallery now fetches 56 (its own grouping by
# person) and ef=64 then missed 2 of 300 probes once; 96 keeps a margin over the fetch
# at no measurable cost (INDEX.md). IVF_FLAT misses faces even at nprobe=32.
SEARCH_PARAMS: dict[str, dict[str, int]] = {
    "IVF_FLAT": {"nprobe": 32},
    "HNSW": {"ef": 96},
}
# Which parameter names belong to the search (the rest are build parameters).
SEARCH_KEYS = frozenset({"ef", "nprobe"})


def index_params(
    client: MilvusClient, index_type: str, overrides: Mapping[str, int] | None = None
) -> Any:
    """Index of the vector field; ``overrides`` replace build parameters (the bench)."""
    params = client.prepare_index_params()
    extra: dict[str, Any] = {**BUILD_PARAMS.get(index_type, {}), **(overrides or {})}
    params.add_index(VECTOR_FIELD, index_type=index_type, metric_type="COSINE", params=extra)
    return params


def search_params(
    index_type: str, overrides: Mapping[str, int] | None = None, *, limit: int | None = None
) -> dict[str, Any]:
    """Search parameters of ``index_type``; ``overrides`` replace them (the bench).

    HNSW refuses a search whose ``limit`` exceeds ``ef``: given the limit, ``ef`` is
    raised to it.
    """
    extra: dict[str, Any] = {**SEARCH_PARAMS.get(index_type, {}), **(overrides or {})}
    if not extra:
        return {}
    if index_type == "HNSW" and limit is not None:
        extra["ef"] = max(int(extra["ef"]), limit)
    return {"params": extra}
