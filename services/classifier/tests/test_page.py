"""The page at `/` and the API docs at `/docs` and `/redoc`, over HTTP on a real server: every file
they load comes from this server (nothing from a CDN), and none of them is in the OpenAPI document.
What a browser does with them is test_page_browser.py."""
import re
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from svc_support import Server, bundle_dir  # noqa: F401  (fixture)

PAGES = ["/", "/docs", "/redoc"]


@pytest.fixture(scope="module")
def server(bundle_dir):  # noqa: F811
    with Server(bundle_dir) as s:
        yield s


def references(html):
    """The URLs an HTML page loads by itself: src= and href= of scripts, styles, icons and images."""
    tags = re.findall(r"<(?:script|link|img|iframe|source)\b[^>]*>", html, re.I)
    return [m.group(2) for tag in tags for m in re.finditer(r"\b(src|href)\s*=\s*[\"']([^\"']*)[\"']", tag, re.I)]


def css_references(css):
    return re.findall(r"url\(\s*[\"']?([^\"')]+)", css) + re.findall(r"@import\s+[\"']([^\"']+)", css)


def assert_same_host(url, base):
    parts = urlsplit(urljoin(base, url))
    assert parts.scheme in ("http", "data") and (parts.scheme == "data" or parts.netloc == urlsplit(base).netloc), url


@pytest.mark.parametrize("path", PAGES)
def test_pages_load_nothing_from_another_host(server, path):
    page = requests.get(server.url + path, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "cdn" not in page.text.lower() and "googleapis" not in page.text
    loaded = references(page.text)
    assert len(loaded) >= 2, loaded   # a stylesheet and a script at least
    for url in loaded:
        assert_same_host(url, server.url + path)
        if url.startswith("data:"):
            continue
        asset = requests.get(urljoin(server.url + path, url), timeout=30)
        assert asset.status_code == 200 and len(asset.content) > 100, (url, asset.status_code)
        if asset.headers["content-type"].startswith("text/css"):
            for inner in css_references(asset.text):
                assert_same_host(inner, asset.url)


def test_the_page_uses_only_the_public_api():
    import os
    static = os.path.join(os.path.dirname(__import__("classifier").__file__), "static")
    script = open(os.path.join(static, "page.js")).read()
    calls = set(re.findall(r"fetch\(\s*\"([^\"?]+)", script))
    assert calls == {"v1/model", "classify"}, calls
    assert "http://" not in script and "https://" not in script


def test_page_routes_are_not_in_the_openapi_document(server):
    paths = requests.get(server.url + "/openapi.json", timeout=30).json()["paths"]
    assert "/classify" in paths and not {"/", "/docs", "/redoc", "/ui/{name}", "/docs/files/{name}"} & set(paths)


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2Fapp.py", "/docs/files/index.html", "/docs/files/x"])
def test_unknown_page_files_are_json_404s(server, path):
    r = requests.get(server.url + path, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_page_requests_are_counted_under_their_route(server):
    requests.get(server.url + "/ui/page.js", timeout=30)
    requests.get(server.url + "/ui/missing.js", timeout=30)
    text = requests.get(server.url + "/metrics", timeout=30).text
    assert 'classifier_requests_total{method="GET",route="/ui/{name}",status="200"}' in text
    assert 'classifier_requests_total{method="GET",route="/ui/{name}",status="404"}' in text
    assert 'route="/ui/missing.js"' not in text   # no client can add a series
