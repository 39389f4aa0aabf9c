"""The dashboard: a static single-page app served at / on the API's own origin.

The files are built from web/ (``npm ci && npm run build``) into ``virtpool/web/static`` and
ship inside the Python package, so that nothing is fetched at run time. The page talks to the
same REST API, event stream and console websocket as every other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"

# Scripts and styles from this origin only; no frames, no plugins. 'unsafe-inline' for styles
# only: xterm.js and uPlot size their elements with inline styles.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def install(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(index, headers=HEADERS)

    app.mount("/assets", StaticFiles(directory=STATIC_DIR / "assets"), name="assets")
