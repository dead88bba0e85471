"""The page at `/` and the API docs at `/docs` in a real browser: Debian's headless Chromium driven by
selenium, against a real server on loopback. A person's steps (choose a photo, a text file, several
files; open the docs), what the page shows checked against what the API answers for the same file,
and every request the browser made checked to have gone to this server alone.

Skipped only when Chromium and its driver are not installed (apt-get install chromium chromium-driver;
.ci/run installs them), never under CI=true. MBV3_PAGE_BUNDLE=DIR runs the page on that bundle instead
of a random-weight one (the README's screenshot is of the digits demo: build/page/page.png)."""
import io
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import requests
from PIL import Image

from svc_support import Server, make_bundle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SHOTS = os.path.join(ROOT, "build", "page")
CHROMIUM = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
DRIVER = ["/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver"]
NOTICE = "THIS IS A TEST MODEL WITH RANDOM WEIGHTS.\nIts answers mean nothing."
WAIT = 60   # seconds: generous on two busy cores; a passing run takes a few


def _first(paths):
    return next((p for p in paths if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = os.environ.get("MBV3_PAGE_BUNDLE") or make_bundle(tmp_path_factory.mktemp("page") / "bundle",
                                                               notice=NOTICE)
    with Server(bundle, MAX_BODY_BYTES=1_000_000) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _first(CHROMIUM), _first(DRIVER)
    if not (chromium and driver):
        reason = "no Chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + ": CI must run the browser test")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # no sandbox (root in a container), no GPU, and none of Chromium's own connections: a closed
    # network makes them fail and stall start-up
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--user-data-dir=" + profile, "--window-size=1100,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    drv.set_page_load_timeout(WAIT)
    drv.get("about:blank")
    requested_urls(drv)   # from here on, what the pages request (not Chromium's own new-tab page)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(browser, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(lambda d: condition(d), what)


def requested_urls(browser):
    """Every URL the browser requested since the last call (Chrome's performance log)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_only_this_server(urls, server):
    """Every request that could leave the machine (http, https, ws, ...) went to `server`; data:, blob:
    and the browser's own chrome:// pages are not network requests."""
    network = [u for u in urls if not u.startswith(("data:", "blob:", "chrome:", "about:"))]
    assert network, "the browser requested nothing from the server?"
    foreign = [u for u in network if not u.startswith(server.url + "/")]
    assert not foreign, foreign


def open_page(browser, server):
    browser.get(server.url + "/")
    wait(browser, lambda d: "ready" in d.find_element("id", "model-status").get_attribute("class"), "model ready")


def choose(browser, *paths):
    """Choose files in the page's file input, as a person does in the file dialog; returns the new cards."""
    before = len(browser.find_elements("css selector", "#results .card"))
    browser.find_element("id", "files").send_keys("\n".join(paths))
    wait(browser, lambda d: len(d.find_elements("css selector", "#results .card")) == before + len(paths), "cards")
    cards = browser.find_elements("css selector", "#results .card")[:len(paths)]   # newest first
    wait(browser, lambda d: all("done" in c.get_attribute("class") or "failed" in c.get_attribute("class")
                                for c in cards), "answers")
    return list(reversed(cards))   # in the order chosen


def rows(card):
    return [(li.get_attribute("data-label"), float(li.get_attribute("data-score")),
             li.find_element("css selector", ".pct").text, li.find_element("css selector", ".label").text)
            for li in card.find_elements("css selector", ".prediction")]


def sample_photo():
    """One of scikit-learn's sample photographs (china.jpg), as shipped."""
    import sklearn.datasets
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")


def api_answer(server, path, content_type="image/jpeg"):
    with open(path, "rb") as f:
        r = requests.post(server.url + "/classify", data=f.read(), headers={"Content-Type": content_type},
                          params={"top_k": 5}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["predictions"]


def test_a_photo_gets_the_apis_top5_and_the_model_is_described(browser, server, tmp_path):
    open_page(browser, server)
    model = requests.get(server.url + "/v1/model", timeout=30).json()
    text = browser.find_element("id", "model").text
    for shown in (model["name"], model["version"], model["serving"]["backend"],
                  "%dx%d" % tuple(model["preprocessing"]["size"])):
        assert shown.replace("x", "\u00d7") in text.replace("x", "\u00d7"), (shown, text)
    if model.get("notice"):
        notice = browser.find_element("id", "notice")
        assert notice.is_displayed() and model["notice"].split("\n")[0] in notice.text
    photo = sample_photo()
    (card,) = choose(browser, photo)
    shown = rows(card)
    expected = api_answer(server, photo)
    assert len(shown) == 5 and [r[0] for r in shown] == [r[3] for r in shown] == [p["label"] for p in expected]
    # one image alone in a batch both times, so the same arithmetic: equal to float32 rounding
    assert [r[1] for r in shown] == pytest.approx([p["score"] for p in expected], abs=1e-6)
    assert [r[2] for r in shown] == ["%.1f%%" % (p["score"] * 100) for p in expected]
    assert "server:" in card.find_element("css selector", ".timing").text
    thumb = card.find_element("css selector", "img.thumb")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumb) == 640
    assert not card.find_element("css selector", ".error").is_displayed()


def test_a_text_file_shows_the_apis_415(browser, server, tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("not an image\n")
    (card,) = choose(browser, str(note))
    error = card.find_element("css selector", ".error")
    assert error.is_displayed() and "failed" in card.get_attribute("class")
    assert "Not an image type the service takes: send JPEG, PNG, WebP, BMP or GIF." in error.text
    assert "Content-Type text/plain is not supported" in error.text and "[415 unsupported_media_type]" in error.text
    assert not card.find_elements("css selector", ".prediction")


DROP_AND_PASTE = """
const done = arguments[arguments.length - 1];
const canvas = document.createElement("canvas");
canvas.width = 80; canvas.height = 60;
const ctx = canvas.getContext("2d");
ctx.fillStyle = "#c33"; ctx.fillRect(0, 0, 80, 60); ctx.fillStyle = "#fff"; ctx.fillRect(20, 15, 40, 30);
canvas.toBlob(function (blob) {
  const dropped = new DataTransfer();
  dropped.items.add(new File([blob], "dropped.png", {type: "image/png"}));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dropped, bubbles: true,
                                                                       cancelable: true}));
  const pasted = new DataTransfer();
  pasted.items.add(new File([blob], "pasted.png", {type: "image/png"}));
  document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: pasted, bubbles: true, cancelable: true}));
  done();
}, "image/png");
"""


def test_a_dropped_and_a_pasted_image_are_classified(browser, server):
    before = len(browser.find_elements("css selector", "#results .card"))
    browser.execute_async_script(DROP_AND_PASTE)
    wait(browser, lambda d: len(d.find_elements("css selector", "#results .card.done")) >= 2 and
         len(d.find_elements("css selector", "#results .card")) == before + 2, "two answers")
    cards = browser.find_elements("css selector", "#results .card")[:2]
    assert [c.find_element("css selector", ".filename").text for c in cards] == ["pasted.png", "dropped.png"]
    assert all(len(rows(c)) == 5 and "done" in c.get_attribute("class") for c in cards)


def a_digit(path):
    """A handwritten 7 from scikit-learn's digits as a 64x64 grey PNG: what the digits demo knows."""
    from sklearn.datasets import load_digits
    digit = load_digits().images[7] * (255.0 / 16.0)
    Image.fromarray(digit.astype(np.uint8), "L").resize((64, 64), Image.BILINEAR).save(str(path))
    return str(path)


def test_several_files_are_answered_part_by_part(browser, server, tmp_path):
    png = a_digit(tmp_path / "digit-7.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a JPEG")
    photo, png_card, broken_card = choose(browser, sample_photo(), png, str(broken))
    assert [r[0] for r in rows(photo)] == [p["label"] for p in api_answer(server, sample_photo())]
    assert len(rows(png_card)) == 5
    error = broken_card.find_element("css selector", ".error").text
    assert "Not an image the service can read" in error and "[invalid_image]" in error


def test_a_file_over_the_body_limit_says_the_limit(browser, server, tmp_path):
    big = tmp_path / "noise.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(buf, "PNG")
    big.write_bytes(buf.getvalue())
    assert big.stat().st_size > 1_000_000
    (card,) = choose(browser, str(big))
    error = card.find_element("css selector", ".error").text
    assert "Too large to send: the service takes at most 977 KiB per request." in error, error
    assert "over the limit of 1000000 bytes (MAX_BODY_BYTES)" in error


def test_the_page_requested_nothing_from_another_host_and_looks_like_a_page(browser, server):
    assert_only_this_server(requested_urls(browser), server)
    os.makedirs(SHOTS, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    shot = os.path.join(SHOTS, "page.png")
    browser.save_screenshot(shot)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert image.shape[1] >= 1000 and image.std() > 20, image.std()   # not blank
    assert len(np.unique(image.reshape(-1, 3)[::97], axis=0)) > 50   # text, bars, photos: many colours
    logs = browser.get_log("browser")
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs   # the CSP allows what it uses
    errors = [e for e in logs if e["level"] == "SEVERE" and "/classify" not in e["message"]]
    assert not errors, errors   # no script error (the refused uploads' 4xx are logged by Chrome as SEVERE)


def test_phone_width_has_no_sideways_scrolling(browser, server):
    browser.set_window_size(390, 844)
    try:
        open_page(browser, server)
        choose(browser, sample_photo())
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
        browser.save_screenshot(os.path.join(SHOTS, "page-phone.png"))
    finally:
        browser.set_window_size(1100, 1400)


def test_docs_render_offline(browser, server):
    requested_urls(browser)   # start afresh
    browser.get(server.url + "/docs")
    wait(browser, lambda d: d.find_elements("css selector", ".swagger-ui .opblock"), "Swagger UI's operations")
    text = browser.find_element("id", "swagger-ui").text
    assert "/classify" in text and "/v2/models/{name}/infer" in text
    urls = requested_urls(browser)
    assert server.url + "/openapi.json" in urls and server.url + "/docs/files/swagger-ui-bundle.js" in urls
    assert_only_this_server(urls, server)
    # a request the CSP blocks is in no performance log: the console says it (ReDoc's CDN logo did)
    browser.get(server.url + "/redoc")
    wait(browser, lambda d: "Classify one image" in d.find_element("tag name", "body").text, "ReDoc's operations")
    assert_only_this_server(requested_urls(browser), server)
    csp = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not csp, csp
