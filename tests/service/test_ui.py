"""The /ui/ pages in-process: shells that hold no data, their policy, their packaged assets.

The pages themselves are driven in a real browser by ``tests/service/test_ui_browser.py``.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.api.routes import ui
from service.report_style import REPORT_STYLE_SOURCE
from tests.conftest import make_study

ROOT = Path(__file__).resolve().parents[2]
ID = "0" * 32
PAGES = (f"/ui/studies/{ID}", "/ui/submit", f"/ui/compare?ids={ID},{'1' * 32}", "/ui/atlas?task=digits_mlp")
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' " + REPORT_STYLE_SOURCE + "; "
          "img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
          "frame-ancestors 'none'")


@pytest.fixture
def secure(settings):
    with TestClient(create_app(settings.model_copy(update={"auth": "required"}))) as c:
        yield c


def test_pages_answer_without_a_token_and_hold_no_data(secure, engine):
    study = make_study(engine, owner="alice", name="secret plan")
    for path in (*PAGES, f"/ui/studies/{study.id}"):
        r = secure.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-security-policy"] == ui.CONTENT_SECURITY_POLICY == POLICY
        assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
        html = r.text
        assert 'data-auth="required"' in html and "secret plan" not in html and "alice" not in html
        assert '<form id="login" hidden' in html and '<main id="main" hidden>' in html
        # Scripts only from files (the policy has no inline script), no inline handlers.
        assert re.findall(r"<script(?![^>]*\ssrc=)", html) == []
        assert re.search(r"\son\w+=", html) is None
    assert f'data-study-id="{study.id}"' in secure.get(f"/ui/studies/{study.id}").text
    # The data behind them still needs the token; the JSON of a study is where it was.
    assert secure.get(f"/studies/{study.id}").status_code == 401
    assert secure.get("/atlas").status_code == 401


def test_bad_page_requests_are_named(secure):
    assert secure.get("/ui/studies/not-an-id").status_code == 422
    assert secure.get("/ui/submit", params={"x": "1"}).status_code == 422
    assert secure.get("/ui/assets/../routes/ui.py").status_code == 404
    assert secure.get("/ui/assets/nope.js").status_code == 404


def test_every_asset_a_page_names_is_served_and_packaged(secure):
    named = set()
    for path in PAGES:
        named |= set(re.findall(r'(?:src|href)="/ui/assets/([^"]+)"', secure.get(path).text))
    assert named == set(ui.ASSETS)
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service.api"]
    for name, media_type in ui.ASSETS.items():
        r = secure.get(f"/ui/assets/{name}")  # no token: the same for everyone, nothing private
        assert r.status_code == 200 and r.headers["content-type"].startswith(media_type), name
        assert any(fnmatch(f"static/ui/{name}", g) for g in globs), f"{name} is not in the package data"
        assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "") or name == "js-yaml.min.js"
    for name in ui.ASSETS:
        if name.endswith(".js") and name != "js-yaml.min.js":
            source = (ROOT / "service/api/static/ui" / name).read_text()
            assert re.search(r"\.(innerHTML|outerHTML|insertAdjacentHTML)|\beval\(|new Function", source) is None, name


def test_the_team_page_links_the_pages(client, engine):
    study = make_study(engine, name="local study")
    html = client.get("/").text
    assert f'<a href="/ui/studies/{study.id}">local study</a>' in html
    assert '<a href="/ui/submit">submit a study</a>' in html and '<a href="/ui/atlas">atlas</a>' in html
    assert '<button type="button" id="compare" disabled' in html


def test_me_says_who_the_token_is(secure, engine, client):
    from service.db import session_scope
    from service.tokens import create_token

    with session_scope(engine) as s:
        alice, root = create_token(s, "alice"), create_token(s, "root", admin=True)
    assert secure.get("/me").status_code == 401
    assert secure.get("/me", headers={"Authorization": f"Bearer {alice}"}).json() == {"name": "alice", "admin": False}
    assert secure.get("/me", headers={"Authorization": f"Bearer {root}"}).json() == {"name": "root", "admin": True}
    assert client.get("/me").json() == {"name": "local", "admin": True}  # auth off
