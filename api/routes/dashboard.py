"""The web dashboard (minimal for now: a landing page)."""

from __future__ import annotations

from flask import Blueprint, render_template

from api.openapi import build_openapi

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index():
    return render_template("index.html")


@bp.get("/v1/openapi.json")
def openapi_json():
    return build_openapi()


@bp.get("/docs")
def api_docs():
    return render_template("docs.html", spec=build_openapi())


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}
