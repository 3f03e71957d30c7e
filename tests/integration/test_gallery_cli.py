"""``facestream gallery ...``, ``calibrate`` and ``eval openset`` through the real CLI
(Typer's runner on ``pipeline.cli.app``), on Milvus Lite and LFW photos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.gallery.catalogue import Catalogue
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.image_folders import identity_folders
from pipeline.models.store import ModelStore
from pipeline.procs import free_ports
from tests.support.gallery import lfw_root, photos
from tests.support.models import TwoVersions, private_store
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

PERSON = "Abdullah_Gul"


@pytest.fixture(scope="module")
def lfw(shared_dir: Path) -> Path:
    return lfw_root(shared_dir)


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_gallery_commands_end_to_end(
    tmp_path: Path, lfw: Path, two_versions: TwoVersions
) -> None:
    store, v_flip, v_plain = two_versions
    port = free_ports(1)[0]
    env = {
        "FACESTREAM_MODELS__STORE": str(store.root),
        "FACESTREAM_GALLERY__DATA_DIR": str(tmp_path / "g"),
        # The defaults otherwise: the local Milvus server, a SQLite catalogue in data_dir.
        "FACESTREAM_GALLERY__LOCAL_MILVUS_PORT": str(port),
    }
    local = LocalMilvus(tmp_path / "g" / "milvus", port)
    # No server runs: a command starts the local one, and stops it when it exits.
    code, out, err = cli(env, "gallery", "status", "--json")
    assert code == 0, err
    assert json.loads(out)["milvus_uri"] == f"http://127.0.0.1:{port}"
    assert not local.running()
    # One held by another process (as `facestream run` holds it) is shared, not restarted.
    local.attach()
    try:
        _cli_session(env, tmp_path, lfw, store, v_flip, v_plain)
    finally:
        assert local.release()  # the last user stops it


def _cli_session(
    env: dict[str, str], tmp_path: Path, lfw: Path, store: ModelStore, v_flip: str, v_plain: str
) -> None:
    catalogue = Catalogue(f"sqlite:///{tmp_path / 'g' / 'catalogue.sqlite3'}")
    imgs = [str(p) for p in photos(lfw, PERSON)]
    code, out, err = cli(
        env, "gallery", "enroll", *imgs[:2], "--name", PERSON, "--pick", "center",
        "--external-id", "E1", "--meta", "site=north", "--json",
    )  # fmt: skip
    assert code == 0, err
    enrolled = json.loads(out)
    ident = enrolled["identity"]["identity_id"]
    assert enrolled["identity"]["metadata"] == {"site": "north"}
    assert catalogue.crop_count(ident) == 2

    blank = tmp_path / "blank.png"
    blank.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = cli(env, "gallery", "enroll", imgs[2], str(blank), "--name", "X")
    assert code == 2
    assert "rejected" in err and "blank.png" in err and "nothing stored" in err

    code, out, _ = cli(env, "gallery", "list", "--json")
    assert code == 0 and [i["identity_id"] for i in json.loads(out)] == [ident]
    code, out, _ = cli(env, "gallery", "rename", ident, "A. Gul")
    assert code == 0 and "A. Gul" in out
    code, out, _ = cli(env, "gallery", "show", ident)
    shown = json.loads(out)
    assert shown["name"] == "A. Gul" and len(shown["faces"]) == 2

    code, out, _ = cli(env, "gallery", "search", imgs[2], "--json")
    assert code == 0
    res = json.loads(out)
    assert res["model_version"] == v_flip and res["threshold"]["provenance"]
    assert [f["identity"]["identity_id"] for f in res["faces"] if f["identity"]] == [ident]
    code, out, _ = cli(env, "gallery", "search", imgs[2])
    assert "A. Gul" in out and "threshold=" in out

    code, out, err = cli(env, "gallery", "reembed", "--to", v_plain, "--json")
    assert code == 0, err
    assert json.loads(out)["collection"].endswith(v_plain.replace("-", "_"))
    code, out, _ = cli(env, "gallery", "status", "--json")
    status = json.loads(out)
    assert status["active_version"] == v_plain and len(status["collections"]) == 2
    code, out, _ = cli(env, "gallery", "search", imgs[2], "--json")
    assert json.loads(out)["model_version"] == v_plain

    code, out, _ = cli(env, "gallery", "remove", ident, "--json")
    assert code == 0 and sum(json.loads(out)["rows_deleted"].values()) == 4
    assert catalogue.crop_count(ident) == 0
    code, out, _ = cli(env, "gallery", "search", imgs[2], "--json")
    assert all(f["decision"] != "identity" for f in json.loads(out)["faces"])
    code, _, err = cli(env, "gallery", "show", ident)
    assert code == 2 and "no identity" in err
    # The audit names the command line's user for every change (issue 17).
    from pipeline.gallery.audit import cli_actor, entries

    trail = entries(catalogue, subject=ident)
    assert [e.action for e in trail] == ["remove", "rename", "enrol"]
    assert {e.actor for e in trail} == {cli_actor()} and trail[1].detail == {"name": "A. Gul"}
    # --milvus-uri points elsewhere: a different (empty) vector store
    code, out, _ = cli(
        env, "gallery", "--milvus-uri", str(tmp_path / "other.db"), "status", "--json"
    )
    assert code == 0 and json.loads(out)["collections"] == []


def test_milvus_lite_held_by_another_process_is_a_clear_error(
    tmp_path: Path, two_versions: TwoVersions
) -> None:
    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from pymilvus import MilvusClient
                MilvusClient({str(db)!r})
                print("ready", flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        env = {"FACESTREAM_MODELS__STORE": str(two_versions.store.root)}
        code, _, err = cli(
            env, "gallery", "--data-dir", str(tmp_path / "g"), "--milvus-uri", str(db), "status"
        )
        assert code == 2
        assert "open in another process" in err and "facestream serve" in err
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_cli_import_stays_light() -> None:
    # `facestream --help` must not pay for pymilvus, Ray or FastAPI.
    code = (
        "import sys, pipeline.cli; "
        "print(sorted(m for m in ('pymilvus', 'ray', 'fastapi', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ},
    ).stdout  # fmt: skip
    assert out.strip() == "[]"


def test_calibrate_then_eval_openset_on_disjoint_identity_splits(
    tmp_path: Path, lfw: Path, two_versions: TwoVersions
) -> None:
    _, v_flip, _ = two_versions
    # A copy of the version: calibration rewrites its manifest.
    store_root = private_store(two_versions.store, tmp_path / "models", v_flip).root
    # A small LFW folder: the 24 first identities with >= 4 photos, at most 6 photos each.
    subset = tmp_path / "lfw"
    for name, paths in list(identity_folders(lfw, min_images=4).items())[:24]:
        (subset / name).mkdir(parents=True)
        for p in paths[:6]:
            (subset / name / p.name).symlink_to(p)
    env = {"FACESTREAM_MODELS__STORE": str(store_root)}
    cache = str(tmp_path / "cache")
    code, out, err = cli(
        env, "calibrate", "--root", str(subset), "--split", "calibration",
        "--target-far", "0.01", "--cache-dir", cache,
    )  # fmt: skip
    assert code == 0, err
    thr = ModelStore(store_root).manifest(v_flip).threshold
    assert thr.target_far == 0.01 and "calibration split" in thr.provenance
    assert f"{thr.value:.4f}" in out
    assert "1:N searches keep using the open-set curve" in out
    code, out, err = cli(
        env, "calibrate", "--root", str(subset), "--target-far", "1e-6", "--cache-dir", cache
    )
    assert code == 2 and "cannot measure a FAR of 1e-06" in err

    code, out, err = cli(
        env, "eval", "openset", "--root", str(subset), "--cache-dir", cache,
        "--out", str(tmp_path / "report"),
    )  # fmt: skip
    assert code == 0, err
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    # 1:N searches use the shipped open-set curve at the gallery's size; the pair
    # calibration above kept it (it decides 1:1 verification) and says so
    curve = ModelStore(store_root).manifest(v_flip).threshold.open_set
    assert curve is not None and thr.open_set == curve
    assert rep["threshold_kind"] == "open_set"
    assert rep["threshold"] == curve.at(rep["gallery_faces"])[0]
    assert rep["threshold_target_far"] == curve.target_far
    assert rep["n_calibration_identities"] + rep["n_enrolled"] + rep["n_never_enrolled"] == 24
    assert rep["n_calibration_identities"] > 0 and rep["n_enrolled"] > 0
    assert rep["n_never_enrolled"] > 0
    assert rep["rank1"] >= 0.9  # dlib's model on frontal LFW faces
    assert rep["dir_at_threshold"] <= rep["rank1"]
    assert 0.0 <= rep["far_at_threshold"] <= 1.0
    assert "rank-1" in out and "DIR" in out


def test_serve_refuses_to_start_without_an_api_token(
    tmp_path: Path, two_versions: TwoVersions
) -> None:
    env = {
        "FACESTREAM_MODELS__STORE": str(two_versions.store.root),
        "FACESTREAM_GALLERY__DATA_DIR": str(tmp_path / "g"),
        "FACESTREAM_GALLERY__API_TOKEN": "",
    }
    code, _, err = cli(env, "serve", "--port", "0")
    assert code == 2 and "no API token configured" in err
    env["FACESTREAM_GALLERY__API_TOKEN"] = "short"
    code, _, err = cli(env, "serve", "--port", "0")
    assert code == 2 and "at least 16 characters" in err
    assert "short" not in err  # not even a rejected token is printed


def test_stores_down_at_start_up_are_one_line_errors_naming_the_address(
    tmp_path: Path, two_versions: TwoVersions
) -> None:
    port = free_ports(1)[0]  # nothing listens there
    base = {
        "FACESTREAM_MODELS__STORE": str(two_versions.store.root),
        "FACESTREAM_GALLERY__DATA_DIR": str(tmp_path / "g"),
    }
    code, _, err = cli(
        {**base, "FACESTREAM_GALLERY__MILVUS_URI": f"http://127.0.0.1:{port}"}, "gallery", "status"
    )
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert f"Milvus server at http://127.0.0.1:{port}" in err

    password = "s3cret-password"
    code, _, err = cli(
        {
            **base,
            "FACESTREAM_GALLERY__MILVUS_URI": str(tmp_path / "lite.db"),
            "FACESTREAM_GALLERY__CATALOGUE_URL": f"postgresql+psycopg://fs@127.0.0.1:{port}/fs",
            "FACESTREAM_GALLERY__CATALOGUE_PASSWORD": password,
        },
        "gallery",
        "status",
    )
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert f"catalogue database at postgresql+psycopg://fs:***@127.0.0.1:{port}/fs" in err
    assert password not in err


def test_gallery_server_holds_the_local_server_until_interrupted(
    tmp_path: Path, two_versions: TwoVersions
) -> None:
    port = free_ports(1)[0]
    env = {
        "FACESTREAM_MODELS__STORE": str(two_versions.store.root),
        "FACESTREAM_GALLERY__DATA_DIR": str(tmp_path / "g"),
        "FACESTREAM_GALLERY__LOCAL_MILVUS_PORT": str(port),
    }
    code, out, _ = cli(env, "gallery", "server", "--status")
    assert code == 1 and "not running" in out
    holder = subprocess.Popen(
        [sys.executable, "-c", "from pipeline.cli import app; app()", "gallery", "server"],
        env={**os.environ, **env}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    local = LocalMilvus(tmp_path / "g" / "milvus", port)
    try:

        def answers() -> bool:
            assert holder.poll() is None, holder.communicate()
            return local.running()

        # 300 s: a guard; the wait ends when the server answers.
        wait_until("the local Milvus server answers", answers, 300)
        code, out, _ = cli(env, "gallery", "server", "--status")
        assert code == 0 and f"127.0.0.1:{port}" in out and ": running" in out
        code, out, err = cli(env, "gallery", "status", "--json")  # attaches, leaves it up
        assert code == 0, err
        assert local.running()
    finally:
        holder.send_signal(signal.SIGINT)
        _, rest = holder.communicate(timeout=120)
    assert holder.returncode == 0, rest
    assert "stopped" in rest
    assert not local.running()
