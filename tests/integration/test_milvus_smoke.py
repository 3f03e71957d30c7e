"""Milvus Lite through MilvusClient: create, insert, exact search, delete, alias."""

from __future__ import annotations

import numpy as np
import pytest
from pymilvus import MilvusClient

pytestmark = pytest.mark.integration

DIM = 128
N_ROWS = 200


def _vectors() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((N_ROWS, DIM)).astype(np.float32)


def test_collection_search_delete_alias(milvus_client: MilvusClient) -> None:
    client = milvus_client
    client.create_collection("faces_v1", dimension=DIM, metric_type="COSINE")
    vectors = _vectors()
    rows = [
        {"id": i, "vector": vectors[i].tolist(), "identity": f"person-{i % 10}"}
        for i in range(N_ROWS)
    ]
    assert client.insert("faces_v1", rows)["insert_count"] == N_ROWS
    assert client.get_collection_stats("faces_v1")["row_count"] == N_ROWS

    for probe in (0, 57, N_ROWS - 1):
        hits = client.search(
            "faces_v1", data=[vectors[probe].tolist()], limit=3, output_fields=["vector"]
        )[0]
        assert hits[0]["id"] == probe
        assert hits[0]["distance"] == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(hits[0]["entity"]["vector"], vectors[probe], rtol=1e-6)
        # Random 128-d vectors are nearly orthogonal: the runner-up is far from a match.
        assert hits[1]["distance"] < 0.5

    client.delete("faces_v1", filter='identity == "person-3"')
    assert client.query("faces_v1", filter='identity == "person-3"', output_fields=["id"]) == []
    assert client.get_collection_stats("faces_v1")["row_count"] == N_ROWS - N_ROWS // 10
    hits = client.search("faces_v1", data=[vectors[3].tolist()], limit=1)[0]
    assert hits[0]["id"] != 3

    client.create_alias("faces_v1", "gallery")
    assert client.list_aliases("faces_v1")["aliases"] == ["gallery"]
    hits = client.search("gallery", data=[vectors[42].tolist()], limit=1)[0]
    assert hits[0]["id"] == 42
    client.insert("gallery", [{"id": 10_000, "vector": vectors[3].tolist(), "identity": "x"}])
    hits = client.search("faces_v1", data=[vectors[3].tolist()], limit=1)[0]
    assert hits[0]["id"] == 10_000


def test_alias_cutover_between_collections(milvus_client: MilvusClient) -> None:
    # The gallery swaps collection versions by moving an alias; readers keep one name.
    client = milvus_client
    vectors = _vectors()
    for name, offset in (("faces_v1", 0), ("faces_v2", 1_000)):
        client.create_collection(name, dimension=DIM, metric_type="COSINE")
        client.insert(name, [{"id": offset + i, "vector": vectors[i].tolist()} for i in range(10)])

    client.create_alias("faces_v1", "gallery")
    assert client.search("gallery", data=[vectors[5].tolist()], limit=1)[0][0]["id"] == 5
    client.alter_alias("faces_v2", "gallery")
    assert client.search("gallery", data=[vectors[5].tolist()], limit=1)[0][0]["id"] == 1_005
    assert client.describe_alias("gallery")["collection_name"] == "faces_v2"
