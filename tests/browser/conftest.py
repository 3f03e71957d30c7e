"""Fixtures of the web UI's browser tests: the real REST app (uvicorn in a thread) over a
real gallery (a corner of the session's Milvus server, a SQLite catalogue) with the
review loop, driven by headless Chromium from Debian's packages through selenium."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.gallery.service import Gallery
from pipeline.models.store import ModelStore
from tests.support.servers import serve_app

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

    from pipeline.gallery.review import Review

REPO_ROOT = Path(__file__).resolve().parents[2]
SHOTS = REPO_ROOT / "reports" / "browser"
WAIT_S = 120.0  # enrolment runs the face core on a shared 2-core machine


@dataclass
class Web:
    url: str
    token: str
    gallery: Gallery
    review: Review


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths; installed with apt by scripts/chromium.sh when
    missing. Skips only when they cannot be installed (not root, no apt, offline)."""
    script = str(REPO_ROOT / "scripts" / "chromium.sh")
    res = subprocess.run(["bash", script, "install"], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.skip(f"Chromium cannot be installed: {res.stderr.strip()[-300:]}")
    paths = subprocess.run(["bash", script, "paths"], capture_output=True, text=True, timeout=30)
    if paths.returncode != 0:
        pytest.skip(f"Chromium not found after install: {paths.stderr.strip()}")
    browser, driver = paths.stdout.split()
    return browser, driver


@pytest.fixture(scope="module")
def web(
    tmp_path_factory: pytest.TempPathFactory,
    model_store: ModelStore,
    milvus_space_module: dict[str, str],
) -> Iterator[Web]:
    """The REST app with the web UI on a free port, its gallery and review service."""
    from pipeline.config.review import ReviewConfig
    from pipeline.serve.app import create_app

    token = f"tok-{uuid.uuid4().hex}"
    cfg = GalleryConfig(
        data_dir=tmp_path_factory.mktemp("web-gallery"),
        api_token=SecretStr(token),
        review=ReviewConfig(keep_unknowns=True),
        **milvus_space_module,  # type: ignore[arg-type]  # the str settings pydantic parses
    )
    gallery = Gallery.from_settings(
        cfg, FaceConfig(), ModelsConfig(store=model_store.root), store=model_store
    )
    app = create_app(gallery, cfg)
    # The app's own review service, so the test records through the very object the
    # pages read.
    review = app.state.ctx.review
    try:
        with serve_app(app, "web-ui-server") as url:
            yield Web(url, token, gallery, review)
    finally:
        review.close()
        gallery.close()


@pytest.fixture(scope="module")
def driver(chromium: tuple[str, str]) -> Iterator[WebDriver]:
    """Headless Chromium, one per test module; its profile in a removed temp folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = chromium
    profile = tempfile.TemporaryDirectory(prefix="fs-chromium-")
    opts = Options()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root, which Chromium's sandbox refuses
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1100",
        f"--user-data-dir={profile.name}",
    ):
        opts.add_argument(arg)
    # Console messages, so a test can assert the pages raise no script or CSP errors.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.common.exceptions import WebDriverException

    try:
        drv = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    except WebDriverException:
        # On a starved machine Chromium can miss chromedriver's start-up deadline
        # ("DevToolsActivePort file doesn't exist"); a second start is the cure.
        drv = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    try:
        yield drv
    finally:
        drv.quit()
        profile.cleanup()


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save the page as a test artefact (reports/ is not committed)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
