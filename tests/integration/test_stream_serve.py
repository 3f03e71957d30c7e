"""The embedder deployment on Ray Serve: batching, splitting, version tags, hot swap.

On the session's model store with two versions (flip TTA and none: same weights and
alignment, different preprocessing, so different version ids and different vectors).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.config.models import ModelsConfig
from pipeline.config.serve import EmbedderServeConfig
from tests.support.models import TwoVersions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder_app(ray_local: None, two_versions: TwoVersions) -> Iterator[dict]:
    from ray import serve

    from pipeline.serve.embedder_deployment import embedder_app as build

    store, _, _ = two_versions
    cfg = EmbedderServeConfig(
        app_name=f"emb-test-{uuid.uuid4().hex[:6]}",
        num_cpus=0.2,
        max_batch_faces=16,
        batch_wait_timeout_s=0.05,
    )
    models = ModelsConfig(store=store.root)
    serve.start(proxy_location="Disabled")
    handle = serve.run(build(cfg, models), name=cfg.app_name, route_prefix=None)
    try:
        yield {"handle": handle, "cfg": cfg, "models": models}
    finally:
        serve.delete(cfg.app_name)


def _chips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 150, 150, 3), dtype=np.uint8)


def test_concurrent_requests_are_batched_and_split_back_correctly(
    embedder_app: dict, two_versions: TwoVersions
) -> None:
    from pipeline.serve.embedder_deployment import EmbedRequest

    store, flip, _ = two_versions
    handle = embedder_app["handle"]
    info = handle.info.remote().result(timeout_s=60)
    assert info["model_version"] == flip and info["embedding_dim"] == 128
    local = store.load_embedder(flip)

    batches = [_chips(n, seed) for seed, n in enumerate([1, 3, 2, 5, 4, 1])]
    responses = [handle.embed.remote(EmbedRequest(b, info["template_digest"])) for b in batches]
    results = [r.result(timeout_s=120) for r in responses]
    for chips, res in zip(batches, results, strict=True):
        assert res.error is None and res.model_version == flip
        assert res.vectors.shape == (len(chips), 128)
        # Each request gets its own faces' vectors back, in order.
        np.testing.assert_allclose(res.vectors, local.embed(chips), atol=1e-4)


def test_chips_cut_for_another_template_are_refused(embedder_app: dict) -> None:
    from pipeline.serve.embedder_deployment import EmbedRequest

    res = embedder_app["handle"].embed.remote(EmbedRequest(_chips(2, 9), "not-the-digest"))
    out = res.result(timeout_s=60)
    assert out.error == "template_mismatch" and len(out.vectors) == 0


def test_hot_swap_by_user_config_tags_vectors_with_the_new_version(
    embedder_app: dict, two_versions: TwoVersions
) -> None:
    from ray import serve

    from pipeline.serve.embedder_deployment import EmbedRequest
    from pipeline.serve.embedder_deployment import embedder_app as build

    store, flip, plain = two_versions
    cfg, models = embedder_app["cfg"], embedder_app["models"]
    handle = serve.run(
        build(cfg, models.model_copy(update={"version": plain})),
        name=cfg.app_name,
        route_prefix=None,
    )
    info = handle.info.remote().result(timeout_s=60)
    assert info["model_version"] == plain
    chips = _chips(3, 42)
    res = handle.embed.remote(EmbedRequest(chips, info["template_digest"])).result(timeout_s=60)
    assert res.model_version == plain
    np.testing.assert_allclose(res.vectors, store.load_embedder(plain).embed(chips), atol=1e-4)
    # Same weights and alignment, other preprocessing: not comparable, and tagged so.
    assert not np.allclose(res.vectors, store.load_embedder(flip).embed(chips), atol=1e-3)
