"""The web page: one offline HTML file (no CDN) that calls the API: search items, build a history by
clicking, see every model's list side by side with a "because you liked X" reason, post events."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = "index.html"


def add_page(app: FastAPI) -> None:
    html = resources.files("recstack.serve").joinpath("static", PAGE).read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(html)
