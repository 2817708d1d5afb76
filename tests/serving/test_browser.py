"""The clinician page in Debian's headless chromium: upload and drop an image, see bars and overlay."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_cxr.data.synthetic import render_phantom
from tests.conftest import chromium_page
from tests.serving.conftest import CLASSES

SCREENSHOT = Path("/tmp/page.png")

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

DROP_JS = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/png" }));
  const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true });
  document.getElementById("drop-zone").dispatchEvent(drop);
}"""


def phantom_png(label: str, seed: int, size: int = 320) -> bytes:
    """A synthetic chest X-ray as PNG bytes."""
    image, _, _ = render_phantom(label, np.random.default_rng(seed), size)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_page_shows_probabilities_and_overlay(live_server: str) -> None:
    with chromium_page(1200, 900) as (page, problems):
        page.on("requestfailed", lambda req: problems.append(f"failed {req.url}"))
        page.goto(live_server + "/")
        assert "Research use only — not for diagnosis" in page.inner_text(".notice")
        expect(page.locator("#model-info")).to_contain_text("classes: " + ", ".join(CLASSES))

        page.set_input_files(
            "#file-input",
            files=[{"name": "covid-phantom.png", "mimeType": "image/png", "buffer": phantom_png("covid", 1)}],
        )
        page.wait_for_selector("#results:not([hidden])", timeout=30_000)
        assert page.locator(".bar-label").all_inner_texts() == CLASSES
        values = [float(v.replace("%", "")) for v in page.locator(".bar-value").all_inner_texts()]
        assert abs(sum(values) - 100) < 0.5
        assert page.locator(".bar-row.top").count() == 1
        for image_id in ("original", "overlay"):
            size = page.eval_on_selector(f"#{image_id}", "img => img.complete ? img.naturalWidth : 0")
            assert size == 320, image_id
        assert "covid-phantom.png" in page.inner_text("#results-title")
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        dropped = base64.b64encode(phantom_png("normal", 2)).decode()
        page.evaluate(DROP_JS, [dropped, "dropped.png"])
        expect(page.locator("#file-name")).to_have_text("dropped.png", timeout=30_000)

        page.set_input_files(
            "#file-input",
            files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}],
        )
        expect(page.locator("#status.error")).to_contain_text("not an image")
    expected_400 = [p for p in problems if "400" in p]  # the deliberate bad upload
    assert len(expected_400) == 1 and [p for p in problems if p not in expected_400] == []
