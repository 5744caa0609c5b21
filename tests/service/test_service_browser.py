"""End to end in headless Chromium: start ``deepmetric serve`` on an empty gallery, enrol from a photo through
the page, identify a two-face photo (boxes drawn, matches listed), verify, then delete the identity."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
API_KEY = "browser-test-key"

pytestmark = [
    pytest.mark.slow,  # a real server process (dlib) and a real browser: ~15-30 s
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)"),
]


@pytest.fixture
def server(tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    from deepmetric.service.process import serve_in_subprocess

    with serve_in_subprocess(tmp_path / "g", api_key=API_KEY, log_path=tmp_path / "server.log",
                             startup_timeout=120) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_enrol_identify_verify_delete_in_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from deepmetric.faces.samples import write_samples

    photos = {p.name: p for p in write_samples(tmp_path / "photos")}
    wait = WebDriverWait(browser, 60)
    find = browser.find_element

    browser.get(server)
    wait.until(ec.text_to_be_present_in_element((By.ID, "health"), "identities"))

    # Enrolling without the key is refused, with the server's reason shown.
    find(By.ID, "enroll-id").send_keys("eileen")
    find(By.ID, "enroll-images").send_keys(str(photos["astronaut.png"]))
    find(By.ID, "enroll-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "enroll-message"), "missing API key"))

    find(By.ID, "api-key").send_keys(API_KEY)
    find(By.ID, "enroll-name").send_keys("Eileen Collins")
    find(By.ID, "enroll-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "enroll-message"), "enrolled Eileen Collins"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-identity="eileen"]')))

    # A group photo is refused until the page says which face to enrol; then the faces seen are shown.
    find(By.ID, "enroll-id").send_keys("crew")
    find(By.ID, "enroll-images").send_keys(str(photos["two_faces.png"]))
    find(By.ID, "enroll-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "enroll-message"), "2 faces found"))
    Select(find(By.ID, "enroll-face")).select_by_value("largest")
    find(By.ID, "enroll-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "enroll-message"), "faces seen per photo: 2"))
    find(By.CSS_SELECTOR, 'button[data-delete="crew"]').click()
    wait.until(ec.alert_is_present()).accept()
    wait.until(ec.text_to_be_present_in_element((By.ID, "browse-message"), "deleted crew"))

    # Identify a photo with two faces: both boxes drawn, both recognised.
    find(By.ID, "probe-image").send_keys(str(photos["two_faces.png"]))
    find(By.ID, "identify-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "identify-message"), "2 face(s) found"))
    results = find(By.ID, "identify-results").text
    assert results.count("match: eileen") == 2, results
    assert find(By.ID, "probe-canvas").is_displayed()
    wait.until(lambda driver: driver.execute_script(
        "return document.getElementById('probe-canvas').width") == 768)
    browser.save_screenshot(str(tmp_path / "identify.png"))
    if os.environ.get("DEEPMETRIC_SCREENSHOT"):
        shutil.copy(tmp_path / "identify.png", os.environ["DEEPMETRIC_SCREENSHOT"])

    # A photo without a face gets the reason, not a crash.
    find(By.ID, "probe-image").send_keys(str(photos["no_face.png"]))
    find(By.ID, "identify-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "identify-message"), "no face found"))

    # Verify the rotated (EXIF) photo against the claimed identity.
    Select(find(By.ID, "verify-identity")).select_by_value("eileen")
    find(By.ID, "probe-image").send_keys(str(photos["astronaut_rotated_exif.jpg"]))
    find(By.ID, "identify-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "identify-results"), "verify eileen"))
    assert "match: eileen" in find(By.ID, "identify-results").text

    # Browse and delete.
    find(By.CSS_SELECTOR, 'button[data-delete="eileen"]').click()
    wait.until(ec.alert_is_present()).accept()
    wait.until(ec.text_to_be_present_in_element((By.ID, "browse-message"), "deleted eileen"))
    wait.until(lambda driver: not driver.find_elements(By.CSS_SELECTOR, 'tr[data-identity="eileen"]'))
    listing = urllib.request.Request(f"{server}/api/identities", headers={"X-API-Key": API_KEY})  # reads need it
    with urllib.request.urlopen(listing) as response:
        assert b'"total":0' in response.read()
    assert Path(tmp_path / "identify.png").stat().st_size > 10_000
