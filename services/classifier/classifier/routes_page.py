"""The page for people at `/` (plain HTML, CSS and JavaScript shipped in this package, nothing from
another host) and the API docs at `/docs` and `/redoc` with Swagger UI's and ReDoc's files from the
fastapi-offline wheel, so both work on a machine that reaches nothing. The page calls only the public
API (`GET /v1/model`, `POST /classify`). None of these routes is in the OpenAPI document: they are
pages, not API."""
from __future__ import annotations

import os

import fastapi_offline
from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

from .errors import ApiError
from .middleware import page_csp

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGE_FILES = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
DOCS_STATIC = os.path.join(os.path.dirname(os.path.abspath(fastapi_offline.__file__)), "static")
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
              "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
NO_CACHE = {"Cache-Control": "no-cache"}   # revalidated, so a new version of the service is seen at once


def _read(folder, name):
    with open(os.path.join(folder, name), "rb") as f:
        return f.read()


def _page(response):
    """HTMLResponse kwargs for a generated HTML page: its body, and the CSP that allows its inline scripts."""
    return {"content": response.body, "headers": {"Content-Security-Policy": page_csp(response.body)}}


def router(title, openapi_url, oauth2_redirect_url):
    """The page, its two files, and the docs pages (the app's title, OpenAPI and OAuth2 redirect
    URLs); every file is read once, here."""
    page = {name: _read(STATIC, name) for name in PAGE_FILES}
    index = _read(STATIC, "index.html")
    docs = {name: _read(DOCS_STATIC, name) for name in DOCS_FILES}
    # ReDoc's sidebar shows Redocly's logo from their CDN (hidden when it fails to load): an empty
    # data: URL instead, so the page requests nothing from another host (and breaks no CSP rule)
    docs["redoc.standalone.js"] = docs["redoc.standalone.js"].replace(REDOC_LOGO, b"data:,")
    api = APIRouter(include_in_schema=False)

    @api.get("/")
    async def index_page():
        return HTMLResponse(index, headers=NO_CACHE)

    @api.get("/ui/{name}")
    async def page_file(name: str):
        if name not in page:
            raise ApiError(404, "not_found", "no page file %s" % name)
        return Response(page[name], media_type=PAGE_FILES[name], headers=NO_CACHE)

    @api.get("/docs/files/{name}")
    async def docs_file(name: str):
        if name not in docs:
            raise ApiError(404, "not_found", "no docs file %s" % name)
        return Response(docs[name], media_type=DOCS_FILES[name], headers={"Cache-Control": "max-age=86400"})

    # Relative URLs: they resolve from /docs and /redoc alike, behind a proxy's prefix too. Built once:
    # each page's Content-Security-Policy allows its inline script (FastAPI's) by hash.
    # validatorUrl none: Swagger UI would otherwise load a badge from validator.swagger.io, telling it
    # this server's OpenAPI URL.
    swagger = _page(get_swagger_ui_html(openapi_url=openapi_url.lstrip("/"), title=title + " - API docs",
                                        oauth2_redirect_url=oauth2_redirect_url,
                                        swagger_js_url="docs/files/swagger-ui-bundle.js",
                                        swagger_css_url="docs/files/swagger-ui.css",
                                        swagger_favicon_url="docs/files/favicon.png",
                                        swagger_ui_parameters={"validatorUrl": None}))
    oauth2_redirect = _page(get_swagger_ui_oauth2_redirect_html())
    redoc_page = _page(get_redoc_html(openapi_url=openapi_url.lstrip("/"), title=title + " - API docs (ReDoc)",
                                      redoc_js_url="docs/files/redoc.standalone.js",
                                      redoc_favicon_url="docs/files/favicon.png", with_google_fonts=False))

    @api.get("/docs")
    async def swagger_ui():
        return HTMLResponse(**swagger)

    @api.get(oauth2_redirect_url)
    async def swagger_ui_redirect():
        return HTMLResponse(**oauth2_redirect)

    @api.get("/redoc")
    async def redoc():
        return HTMLResponse(**redoc_page)

    return api
