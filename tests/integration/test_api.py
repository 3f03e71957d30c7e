"""The REST API served by Ray Serve on a local Ray, called over HTTP with httpx."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.gallery.catalogue import Catalogue
from tests.support.gallery import lfw_root, photos
from tests.support.models import TwoVersions
from tests.support.stores import postgres_database

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

A, B = "Abdullah_Gul", "Abel_Pacheco"


@dataclass
class Served:
    url: str
    token: str
    catalogue: Catalogue
    client: httpx.Client

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lfw(shared_dir: Path) -> Path:
    return lfw_root(shared_dir)


@pytest.fixture(scope="module")
def served(
    ray_local: None,
    tmp_path_factory: pytest.TempPathFactory,
    lfw: Path,
    milvus_space_module: dict[str, str],
    postgres_url: tuple[str, str, Path],
    two_versions: TwoVersions,
) -> Iterator[Served]:
    from ray import serve

    from pipeline.serve.api import deploy

    store = two_versions.store
    token = f"tok-{uuid.uuid4().hex}"
    data_dir = tmp_path_factory.mktemp("api-gallery")
    # The shared-deployment stores: a Milvus server and a PostgreSQL catalogue.
    db_url, db_password = postgres_database(postgres_url, "api_test")
    cfg = GalleryConfig(
        data_dir=data_dir,
        api_token=SecretStr(token),
        host="127.0.0.1",
        port=free_port(),
        catalogue_url=db_url,
        catalogue_password=SecretStr(db_password),
        **milvus_space_module,  # type: ignore[arg-type]  # the str settings pydantic parses
    )
    # Serve's HTTP options only apply when Serve starts: stop an instance another module
    # left running (for example with its proxy disabled) so ours listens on our port.
    serve.shutdown()
    url = deploy(cfg, FaceConfig(), ModelsConfig(store=store.root))
    try:
        with httpx.Client(base_url=url, timeout=120.0) as client:
            yield Served(url, token, Catalogue(db_url, db_password), client)
    finally:
        serve.shutdown()


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def one(path: Path, field: str = "image") -> dict[str, tuple[str, bytes, str]]:
    return {field: (path.name, path.read_bytes(), "image/jpeg")}


def test_healthz_and_openapi(served: Served) -> None:
    r = served.client.get("/healthz")  # its own Serve application
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # No page of this origin loads scripts from a CDN unless gallery.api_docs says so.
    assert served.client.get("/docs").status_code == 404
    paths = served.client.get("/openapi.json").json()["paths"]
    assert {"/identities", "/identities/{identity_id}", "/search", "/verify", "/healthz"} <= set(
        paths
    )
    assert set(paths["/identities/{identity_id}"]) == {"get", "patch", "delete"}


def test_every_write_needs_the_bearer_token(served: Served, lfw: Path) -> None:
    c = served.client
    before = c.get("/identities", headers=served.auth).json()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": served.token}):
        r = c.post(
            "/identities", files=files(photos(lfw, A)[:1]), data={"name": A}, headers=headers
        )
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.delete("/identities/x", headers=headers).status_code == 401
        assert c.patch("/identities/x", json={"name": "y"}, headers=headers).status_code == 401
        r = c.post("/identities/x/faces", files=files(photos(lfw, A)[:1]), headers=headers)
        assert r.status_code == 401
    assert c.get("/identities", headers=served.auth).json() == before  # nothing was written


def test_reads_need_the_token_by_default(served: Served, lfw: Path) -> None:
    c = served.client
    for r in (
        c.get("/identities"),
        c.get("/gallery"),
        c.post("/search", files=one(photos(lfw, A)[2])),
        c.post("/verify", files=one(photos(lfw, A)[2]), data={"identity_id": "x"}),
    ):
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
    assert c.get("/healthz").status_code == 200


def test_enrol_search_verify_remove(served: Served, lfw: Path) -> None:
    c = served.client
    r = c.post(
        "/identities",
        files=files(photos(lfw, A)[:2]),
        data={"name": A, "external_id": "ext-a", "metadata": '{"desk": 7}', "pick": "center"},
        headers=served.auth,
    )
    assert r.status_code == 201, r.text
    a = r.json()["identity"]
    assert a["n_faces"] == 2 and a["metadata"] == {"desk": 7}
    r = c.post(
        "/identities", files=files(photos(lfw, B)[:2]), data={"name": B, "pick": "center"},
        headers=served.auth,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    b = r.json()["identity"]

    w = served.auth
    r = c.post("/search", files=one(photos(lfw, A)[2]), data={"top_k": "2"}, headers=w)
    assert r.status_code == 200, r.text
    res = r.json()
    thr = res["threshold"]
    assert {"value", "target_far", "provenance"} <= set(thr) and not thr["overridden"]
    hits = [f for f in res["faces"] if f["decision"] == "identity"]
    assert [f["identity"]["identity_id"] for f in hits] == [a["identity_id"]]
    assert hits[0]["similarity"] >= thr["value"]
    assert len(hits[0]["candidates"]) == 2
    for f in res["faces"]:
        assert f["decision"] in ("identity", "unknown", "rejected")

    ida = {"identity_id": a["identity_id"]}
    r = c.post("/verify", files=one(photos(lfw, A)[3]), data=ida, headers=w)
    assert r.status_code == 200 and r.json()["decision"] == "same"
    r = c.post("/verify", files=one(photos(lfw, B)[3]), data=ida, headers=w)
    assert r.status_code == 200 and r.json()["decision"] == "different"
    pair = {**one(photos(lfw, B)[2]), **one(photos(lfw, B)[3], "image_b")}
    r = c.post("/verify", files=pair, headers=w)
    assert r.status_code == 200 and r.json()["decision"] == "same"

    r = c.patch(f"/identities/{b['identity_id']}", json={"name": "Abel P."}, headers=served.auth)
    assert r.status_code == 200 and r.json()["name"] == "Abel P."
    listed = {i["identity_id"]: i["name"] for i in c.get("/identities", headers=w).json()}
    assert listed[b["identity_id"]] == "Abel P."
    shown = c.get(f"/identities/{a['identity_id']}", headers=w).json()
    assert len(shown["faces"]) == 2
    assert served.catalogue.crop_count(a["identity_id"]) == 2  # in PostgreSQL

    r = c.delete(f"/identities/{a['identity_id']}", headers=served.auth)
    assert r.status_code == 200 and r.json()["faces_removed"] == 2
    assert served.catalogue.crop_count(a["identity_id"]) == 0
    res = c.post("/search", files=one(photos(lfw, A)[2]), headers=w).json()
    ids = {cand["identity_id"] for f in res["faces"] for cand in f["candidates"]}
    assert a["identity_id"] not in ids
    assert all(f["decision"] != "identity" for f in res["faces"])
    assert c.get(f"/identities/{a['identity_id']}", headers=w).status_code == 404
    r = c.delete(f"/identities/{a['identity_id']}", headers=served.auth)
    assert r.status_code == 404 and r.json()["error"] == "identity_not_found"


def test_malformed_calls_get_precise_4xx(served: Served, lfw: Path) -> None:
    c = served.client
    good = photos(lfw, B)[0]
    w = served.auth

    def check(r: httpx.Response, status: int, needle: str) -> None:
        assert r.status_code == status, r.text
        assert needle in r.text, r.text

    check(c.post("/search", headers=w), 422, "image")
    check(
        c.post("/search", files={"image": ("x.jpg", b"not an image")}, headers=w),
        400,
        "not a recognised",
    )
    check(c.post("/search", files={"image": ("x.jpg", b"")}, headers=w), 400, "empty")
    check(c.post("/search", files=one(good), data={"top_k": "0"}, headers=w), 422, "top_k")
    check(c.post("/search", files=one(good), data={"threshold": "2"}, headers=w), 422, "threshold")
    check(c.post("/search", files=one(good), data={"crop": "bogus"}, headers=w), 422, "crop")
    check(c.post("/verify", files=one(good), headers=w), 422, "exactly one of")
    check(
        c.post(
            "/verify",
            files={**one(good), **one(good, "image_b")},
            data={"identity_id": "x"},
            headers=w,
        ),
        422,
        "exactly one of",
    )
    check(
        c.post("/verify", files=one(good), data={"identity_id": "nobody"}, headers=w),
        404,
        "nobody",
    )
    check(c.post("/identities", files=files([good]), headers=w), 422, "name")
    check(c.post("/identities", data={"name": "x"}, headers=w), 422, "images")
    check(
        c.post("/identities", files=files([good]), data={"name": "x", "metadata": "{"}, headers=w),
        422,
        "metadata is not valid JSON",
    )
    check(
        c.post(
            "/identities", files=files([good]), data={"name": "x", "metadata": "[1]"}, headers=w
        ),
        422,
        "JSON object",
    )
    r = c.post(
        "/identities",
        files=[*files([good]), ("images", ("junk.jpg", b"junk", "image/jpeg"))],
        data={"name": "x", "pick": "center"},
        headers=w,
    )
    check(r, 422, "enrollment_rejected")
    verdicts = {v["image"]: v for v in r.json()["images"]}
    assert verdicts[good.name]["accepted"] and not verdicts["junk.jpg"]["accepted"]
    check(c.patch("/identities/nobody", json={"name": ""}, headers=w), 422, "name")
    check(c.patch("/identities/nobody", json={"name": "n"}, headers=w), 404, "nobody")
    check(c.post("/identities/nobody/faces", files=files([good]), headers=w), 404, "nobody")
    check(c.get("/identities", params={"limit": 0}, headers=w), 422, "limit")


def test_the_token_never_reaches_the_logs(served: Served, lfw: Path) -> None:
    import ray

    c = served.client
    c.post("/identities", files=files(photos(lfw, B)[:1]), data={"name": "t"})
    c.post(
        "/identities", files=files(photos(lfw, B)[:1]), data={"name": B, "pick": "center"},
        headers=served.auth,
    )  # fmt: skip
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    logs = [p for p in session.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert any(p.suffix in (".log", ".out", ".err") for p in logs)
    leaked = [p for p in logs if served.token.encode() in p.read_bytes()]
    assert leaked == []
