"""The web UI in a real browser: headless Chromium over the real REST app and gallery.

Every page renders (a screenshot of each goes to reports/browser/), an upload enrols a
person, removal asks first, labelling an unknown cluster creates the identity, merge and
purge change the clusters, and both feedback buttons take effect. Unknown faces and
events are recorded through ``Review.record``, the stream's own entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import pytest

from tests.browser.conftest import WAIT_S, Web, screenshot
from tests.support.gallery import photos

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

    from pipeline.gallery.review.records import RecordedFace

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

ENROL = "Colin_Powell"  # enrolled by upload
KNOWN = "Tony_Blair"  # enrolled directly; the events name him
LABELLED = "Junichiro_Koizumi"  # an unknown cluster labelled in the UI
MERGE_A, MERGE_B = "Jean_Chretien", "John_Ashcroft"  # two clusters merged
PURGED = "Laura_Bush"  # a cluster purged
STRANGER = "Hans_Blix"  # an event wrongly named KNOWN: "this is" a new name


def by_css(driver: WebDriver, css: str) -> WebElement:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def wait_for(driver: WebDriver, what: Callable[[WebDriver], object]) -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(what)


def go(driver: WebDriver, web: Web, path: str, ready: str) -> None:
    """Open ``path`` and wait until the element ``ready`` is there."""
    driver.get(web.url + path)
    by_css(driver, ready)


IMAGES_LOADED = "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"


def images_loaded(driver: WebDriver) -> bool:
    return bool(driver.execute_script(IMAGES_LOADED))


def click_through(driver: WebDriver, element: WebElement, ready: str) -> WebElement:
    """Click what loads a new page, wait until the old page is gone, then for ``ready``
    (so an element of the same id on the old page never answers for the new one)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element("tag name", "html")
    element.click()

    def old_page_gone(_: WebDriver) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # While the page is being replaced Chromium may answer for the old node with
            # this instead of a stale reference (selenium's staleness_of lets it through).
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(driver, WAIT_S).until(old_page_gone)
    return by_css(driver, ready)


# Pages the tests provoke on purpose (a wrong token, a refused form) answer with these;
# Chromium logs each as a failed resource.
PROVOKED = tuple(f"status of {s} " for s in (401, 409, 422))


def console_errors(driver: WebDriver) -> list[str]:
    """Script errors, Content-Security-Policy violations and failed loads (SEVERE)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not any(p in e["message"] for p in PROVOKED)
    ]


def record(web: Web, faces: list[RecordedFace]) -> None:
    res = web.review.record(faces)
    assert res.stored == len(faces), res


def kept_faces(
    web: Web, paths: list[Path], *, camera: str, track: str, seq0: int, **event: object
) -> list[RecordedFace]:
    """What the stream would hand over for these photos: each one's aligned chip (as a
    JPEG) and embedding from the gallery's own face core."""
    from pipeline.face.image_io import load_image
    from pipeline.gallery.review.records import RecordedFace

    version = web.gallery.serving_version()
    pipe = web.gallery.pipeline(version)
    out = []
    for i, path in enumerate(paths):
        face = pipe.analyze(load_image(path), pick="center")[0]
        assert face.embedding is not None, face.quality.reasons
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(face.chip, cv2.COLOR_RGB2BGR))
        assert ok
        out.append(
            RecordedFace(
                face_id=f"{camera}:{seq0 + i}:0",
                model_version=version,
                camera_id=camera,
                track_id=track,
                capture_ts_ms=1_700_000_000_000 + (seq0 + i) * 1000,
                quality=face.quality.metrics,
                crop_jpeg=jpeg.tobytes(),
                embedding=face.embedding.tolist(),
                **event,  # type: ignore[arg-type]  # each row's event fields, parsed by pydantic
            )
        )
    return out


@pytest.fixture(scope="module")
def signed_in(driver: WebDriver, web: Web) -> WebDriver:
    """The browser signed in through the login page (a wrong token is refused first)."""
    driver.get(web.url + "/ui/identities")
    field = by_css(driver, "#login input[name=token]")  # redirected to the login page
    screenshot(driver, "01-login")
    field.send_keys("not-the-token-at-all")
    button = driver.find_element("css selector", "#login button")
    assert "Wrong token" in click_through(driver, button, "#error").text
    by_css(driver, "#login input[name=token]").send_keys(web.token)
    click_through(driver, driver.find_element("css selector", "#login button"), "#enrol-form")
    cookie = driver.get_cookie("__Host-facestream_session")  # Secure by default (issue 17)
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["secure"] and cookie["path"] == "/"
    assert web.token not in cookie["value"]
    return driver


@pytest.fixture(scope="module")
def seeded(web: Web, lfw_dir: Path) -> dict[str, str]:
    """KNOWN enrolled; three events naming him (two right, one of STRANGER); unknown
    tracks of four other people (four clusters). Returns event ids by role."""
    known = web.gallery.enroll(
        [(p.name, p.read_bytes()) for p in photos(lfw_dir, KNOWN)[:2]], name=KNOWN, pick="center"
    ).identity.identity_id
    events = kept_faces(
        web,
        photos(lfw_dir, KNOWN)[2:4],
        camera="lobby",
        track="lobby:t1",
        seq0=10,
        decision="identity",
        identity_id=known,
        similarity=0.9,
    ) + kept_faces(
        web,
        photos(lfw_dir, STRANGER)[:1],
        camera="door",
        track="door:t1",
        seq0=20,
        decision="identity",
        identity_id=known,
        similarity=0.61,
    )
    record(web, events)
    for n, person in enumerate((LABELLED, MERGE_A, MERGE_B, PURGED)):
        record(
            web,
            kept_faces(
                web,
                photos(lfw_dir, person)[:3],
                camera="yard",
                track=f"yard:t{n}",
                seq0=100 + 10 * n,
                decision="unknown",
            ),
        )
    clusters = web.review.clusters()
    assert len(clusters) == 4, [c.n_faces for c in clusters]
    return {
        "known": known,
        "wrong": events[1].face_id,
        "stranger": events[2].face_id,
    }


def cluster_of(web: Web, face_id: str) -> str:
    cluster = web.review.sighting(face_id).cluster_id
    assert cluster is not None
    return cluster


def test_every_page_renders(signed_in: WebDriver, web: Web, seeded: dict[str, str]) -> None:
    d = signed_in
    known = f"[data-identity='{seeded['known']}']"
    go(d, web, "/ui/identities", f"{known} img")
    wait_for(d, images_loaded)
    screenshot(d, "02-identities")
    click_through(d, d.find_element("css selector", f"{known} a"), "#faces img")
    assert d.find_element("css selector", "#person-name").text == KNOWN
    assert len(d.find_elements("css selector", "#faces li")) == 2
    wait_for(d, images_loaded)
    screenshot(d, "03-identity")
    click_through(d, d.find_element("css selector", "#remove-link"), "#remove-form")
    screenshot(d, "04-remove-confirm")
    go(d, web, "/ui/unknowns", "#clusters tbody tr")
    assert len(d.find_elements("css selector", "#clusters tbody tr")) == 4
    wait_for(d, images_loaded)
    screenshot(d, "05-unknowns")
    click_through(d, d.find_element("css selector", "#clusters a.reps"), "#faces img")
    assert d.find_element("css selector", "#n-faces").text == "3 in 1 track"
    wait_for(d, images_loaded)
    screenshot(d, "06-unknown")
    go(d, web, "/ui/events", "#events tbody tr")
    assert len(d.find_elements("css selector", "#events tbody tr")) == 3
    wait_for(d, images_loaded)
    screenshot(d, "07-events")
    go(d, web, "/ui/events?camera=door", "#events tbody tr")
    assert len(d.find_elements("css selector", "#events tbody tr")) == 1
    assert console_errors(d) == []


def test_upload_enrols_and_remove_asks_first(
    signed_in: WebDriver, web: Web, lfw_dir: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    d = signed_in
    go(d, web, "/ui/identities", "#enrol-form")
    form = d.find_element("css selector", "#enrol-form")
    # A file that is no photo: refused with its reason, nothing stored.
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a photo")
    form.find_element("name", "name").send_keys("Nobody")
    form.find_element("name", "photos").send_keys(str(bogus))
    button = form.find_element("css selector", "button[type=submit]")
    refusal = click_through(d, button, "#error .verdicts li.bad").text
    assert refusal.startswith("notes.jpg:") and "image" in refusal, refusal
    screenshot(d, "08-enrol-refused")
    assert not [i for i in web.gallery.list() if i.name == "Nobody"]

    picked = photos(lfw_dir, ENROL)[:2]
    form = d.find_element("css selector", "#enrol-form")
    name = form.find_element("name", "name")
    name.clear()
    name.send_keys(ENROL)
    form.find_element("name", "photos").send_keys("\n".join(str(p.resolve()) for p in picked))
    Select(form.find_element("name", "pick")).select_by_value("center")
    click_through(d, form.find_element("css selector", "button[type=submit]"), "#notice")
    assert d.find_element("css selector", "#person-name").text == ENROL
    assert d.find_element("css selector", "#n-faces").text == "2"
    wait_for(d, images_loaded)
    screenshot(d, "09-enrolled")
    ident = next(i for i in web.gallery.list() if i.name == ENROL)
    assert ident.n_faces == 2

    click_through(d, d.find_element("css selector", "#remove-link"), "#remove-form")
    button = d.find_element("css selector", "#remove-form button[type=submit]")
    assert "removed" in click_through(d, button, "#notice").text
    assert not [i for i in web.gallery.list() if i.identity_id == ident.identity_id]
    assert not d.find_elements("css selector", f"[data-identity='{ident.identity_id}']")


def test_label_merge_and_purge_clusters(
    signed_in: WebDriver, web: Web, seeded: dict[str, str]
) -> None:
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    d = signed_in
    labelled, a = cluster_of(web, "yard:100:0"), cluster_of(web, "yard:110:0")
    b, purged = cluster_of(web, "yard:120:0"), cluster_of(web, "yard:130:0")

    # Label: a name nobody has creates the identity from the cluster's best crops.
    row_css = f"tr[data-cluster='{labelled}']"
    go(d, web, "/ui/unknowns", f"{row_css} .label-form")
    row = d.find_element("css selector", row_css)
    row.find_element("name", "name").send_keys(LABELLED)
    click_through(d, row.find_element("css selector", ".label-form button"), "#notice")
    assert d.find_element("css selector", "#person-name").text == LABELLED
    wait_for(d, images_loaded)
    screenshot(d, "10-labelled")
    ident = next(i for i in web.gallery.list() if i.name == LABELLED)
    assert ident.n_faces >= 1
    assert all(c.cluster_id != labelled for c in web.review.clusters())

    # Labelling another cluster with a taken name says how to add to that person instead.
    go(d, web, "/ui/unknowns", f"tr[data-cluster='{a}'] .label-form")
    row = d.find_element("css selector", f"tr[data-cluster='{a}']")
    row.find_element("name", "name").send_keys(LABELLED)
    error = click_through(d, row.find_element("css selector", ".label-form button"), "#error")
    assert "identity_id" in error.text, error.text

    # Merge b into a.
    go(d, web, "/ui/unknowns", "#merge-form")
    d.find_element("css selector", f"input[name=others][value='{a}']").click()
    d.find_element("css selector", f"input[name=others][value='{b}']").click()
    Select(d.find_element("css selector", "#merge-into")).select_by_value(a)
    click_through(d, d.find_element("css selector", "#merge-form button"), "#notice")
    assert d.find_element("css selector", "#n-faces").text == "6 in 2 tracks"
    screenshot(d, "11-merged")

    # Purge asks first; dismissing keeps the cluster, accepting erases it.
    go(d, web, f"/ui/unknowns/{purged}", ".purge-form")
    d.find_element("css selector", ".purge-form button").click()
    WebDriverWait(d, WAIT_S).until(ec.alert_is_present()).dismiss()
    assert any(c.cluster_id == purged for c in web.review.clusters())
    old = d.find_element("tag name", "html")
    d.find_element("css selector", ".purge-form button").click()
    WebDriverWait(d, WAIT_S).until(ec.alert_is_present()).accept()
    WebDriverWait(d, WAIT_S).until(ec.staleness_of(old))
    assert "purged" in by_css(d, "#notice").text
    assert [c.cluster_id for c in web.review.clusters()] == [a]
    screenshot(d, "12-purged")


def test_feedback_buttons_take_effect(
    signed_in: WebDriver, web: Web, seeded: dict[str, str]
) -> None:
    d = signed_in
    wrong, stranger = seeded["wrong"], seeded["stranger"]

    # "Not Tony_Blair" on an event that named him.
    button_css = f"tr[data-event='{wrong}'] .not-this"
    go(d, web, "/ui/events", button_css)
    assert d.find_element("css selector", button_css).text == f"Not {KNOWN}"
    click_through(d, d.find_element("css selector", button_css), "#notice")
    by_css(d, f"tr[data-event='{wrong}'] .feedback.not_this_person")
    kinds = [(f.kind, f.identity_id) for f in web.review.sighting(wrong).feedback]
    assert kinds == [("not_this_person", seeded["known"])]

    # "This is" a typed name nobody has: the face is enrolled as that new person.
    row = d.find_element("css selector", f"tr[data-event='{stranger}']")
    row.find_element("css selector", ".this-is input[name=name]").send_keys(STRANGER)
    save = row.find_element("css selector", ".this-is button")
    click_through(d, save, f"tr[data-event='{stranger}'] .feedback.this_is")
    screenshot(d, "13-feedback")
    person = next(i for i in web.gallery.list() if i.name == STRANGER)
    assert person.n_faces == 1
    kinds = [(f.kind, f.identity_id) for f in web.review.sighting(stranger).feedback]
    assert kinds == [("this_is", person.identity_id)]
    assert console_errors(d) == []


SEEN = "Silvio_Berlusconi"  # unknown on two cameras, and once wrongly named KNOWN


def test_seen_before_shows_every_sighting_in_time_order(
    signed_in: WebDriver, web: Web, seeded: dict[str, str], lfw_dir: Path
) -> None:
    """From an event, "seen before" lists the kept faces of that face across cameras,
    oldest first; purging the unknown person takes those faces off the page."""
    d = signed_in
    faces = photos(lfw_dir, SEEN)
    unknown = kept_faces(
        web, faces[:2], camera="gate", track="gate:t9", seq0=300, decision="unknown"
    ) + kept_faces(web, faces[2:3], camera="garden", track="garden:t9", seq0=400,
                   decision="unknown")  # fmt: skip
    event = kept_faces(
        web, faces[3:4], camera="lobby", track="lobby:t9", seq0=500, decision="identity",
        identity_id=seeded["known"], similarity=0.6,
    )  # fmt: skip
    record(web, unknown + event)
    row = f"[data-event='{event[0].face_id}']"
    go(d, web, "/ui/events", f"{row} a.seen-before")
    click_through(d, d.find_element("css selector", f"{row} a.seen-before"), "#threshold")
    tiles = d.find_elements("css selector", "#timeline li.sighting")
    seen = [(t.get_attribute("data-face"), t.get_attribute("data-camera")) for t in tiles]
    assert seen == [
        ("gate:300:0", "gate"), ("gate:301:0", "gate"), ("garden:400:0", "garden"),
        ("lobby:500:0", "lobby"),
    ], seen  # fmt: skip
    times = [int(t.get_attribute("data-ts") or 0) for t in tiles]
    assert times == sorted(times)
    assert "audit" in d.find_element("css selector", "#threshold").text
    wait_for(d, images_loaded)
    screenshot(d, "11-seen-before")

    # The same from the unknown person's page; then purged, the page shows only the event.
    cluster = cluster_of(web, "gate:300:0")
    go(d, web, f"/ui/unknowns/{cluster}", "#seen-before")
    click_through(d, d.find_element("css selector", "#seen-before"), "#threshold")
    assert len(d.find_elements("css selector", "#timeline li.sighting")) == 4
    for c in {cluster, cluster_of(web, "garden:400:0")}:
        web.review.purge(c)
    go(d, web, f"/ui/sightings?event_id={event[0].face_id}", "#timeline")
    after = d.find_elements("css selector", "#timeline li.sighting")
    assert [t.get_attribute("data-face") for t in after] == ["lobby:500:0"]
    assert console_errors(d) == []
