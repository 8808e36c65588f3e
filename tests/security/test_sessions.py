"""Signing out of the dashboard ends the session on the server: a copy of the cookie taken
before sign-out (a shared machine, a proxy log, malware) opens nothing afterwards."""

from __future__ import annotations

import re

import sqlalchemy as sa

from tests.security.helpers import KEY, make_app

COOKIE = "dorado_session"


def _sign_in(client) -> str:
    page = client.get("/").get_data(as_text=True)
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"api_key": KEY, "csrf_token": form_token}).status_code == 303
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def test_a_copied_cookie_stops_working_after_sign_out(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home")
    token = _sign_in(api.client)
    stolen = api.client.get_cookie(COOKIE).value
    assert api.client.get("/v1/files").status_code == 200  # the session works

    thief = api.app.test_client()
    thief.set_cookie(COOKIE, stolen)
    assert thief.get("/v1/files").status_code == 200  # the copy works while signed in

    assert api.client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert api.client.get("/v1/files").status_code == 401
    replayed = thief.get("/v1/files")
    assert replayed.status_code == 401, replayed.get_json()
    assert "API key" in thief.get("/").get_data(as_text=True)  # back to the sign-in form


def test_sessions_are_kept_only_as_hashes(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home")
    _sign_in(api.client)
    from core.settings import load_settings

    engine = sa.create_engine(load_settings().database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT token_hash FROM dashboard_sessions")).all()
    engine.dispose()
    assert len(rows) == 1
    cookie = api.client.get_cookie(COOKIE).value
    assert rows[0][0] not in cookie and len(rows[0][0]) == 64
