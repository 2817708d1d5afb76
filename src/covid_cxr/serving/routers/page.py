"""The clinician page at `/`: plain HTML, CSS and JS served from the package, no external assets."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["page"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    """The upload page (research use only); security headers come from the SecurityHeaders middleware."""
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))
