"""Swagger UI at /docs from the swagger-ui-bundle package's local files: no CDN, no inline script."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - API documentation</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script></body></html>"""


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs when swagger-ui-bundle is installed; otherwise there is no /docs."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="swagger-ui")
    page = _PAGE.format(title=app.title)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI over /openapi.json."""
        return HTMLResponse(page)
