"""The page and its scripts over plain HTTP: every script the page loads is served, to anyone (as the page
is: it holds no secret), as JavaScript; nothing else under ``/static/`` is."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.support.server import Server, http_request


@pytest.mark.server(sources=[])
async def test_the_page_and_every_script_it_loads_are_served(srv: Server) -> None:
    page = await asyncio.to_thread(http_request, srv.port, "GET", "/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    scripts = re.findall(r'<script src="([^"]+)"></script>', page.body.decode())
    assert scripts[-1] == "/static/page.js" and len(scripts) >= 4, scripts
    for path in scripts:
        r = await asyncio.to_thread(http_request, srv.port, "GET", path)
        assert r.status == 200, path
        assert r.headers["content-type"] == "text/javascript; charset=utf-8"
        assert r.body.startswith(b'"use strict";'), path
    # The page's only inline script is none: everything it runs comes from those files.
    assert "<script>" not in page.body.decode()


@pytest.mark.server(sources=[])
@pytest.mark.parametrize(
    "path", ["/static/nothing.js", "/static/index.html", "/static/../server.py", "/static/%2e%2e/server.py", "/static/"]
)
async def test_nothing_else_under_static_is_served(srv: Server, path: str) -> None:
    r = await asyncio.to_thread(http_request, srv.port, "GET", path)
    assert r.status == 404, (path, r.status)
    assert b"import" not in r.body
