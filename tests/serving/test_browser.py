"""The clinician page in Debian's headless chromium: upload and drop an image, see bars and overlay."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_cxr.data.synthetic import render_phantom
from tests.conftest import chromium_page
from tests.serving.conftest import CLASSES, MODEL_NAME, _wait_until_up, free_port

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
        assert page.locator(".legend-bar").is_visible()
        assert "research only" in page.inner_text("#card-use")
        assert "fp-serving" in page.inner_text("#card-data")  # the bundle's training-data fingerprint
        assert "accuracy 0.500" in page.inner_text("#card-metrics")
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        dropped = base64.b64encode(phantom_png("normal", 2)).decode()
        page.evaluate(DROP_JS, [dropped, "dropped.png"])
        expect(page.locator("#file-name")).to_have_text("dropped.png", timeout=30_000)

        page.set_input_files(
            "#file-input",
            files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}],
        )
        expect(page.locator("#status.error")).to_contain_text("not an image")
        assert page.locator("#results").is_hidden()  # the previous image's result is gone
        assert page.locator(".bar-row").count() == 0
    expected_400 = [p for p in problems if "400" in p]  # the deliberate bad upload
    assert len(expected_400) == 1 and [p for p in problems if p not in expected_400] == []


@pytest.fixture(scope="module")
def keyed_server(bundle_dir: Path) -> Iterator[str]:
    """serve() with an API key, in a subprocess."""
    port = free_port()
    code = (
        "import sys; from covid_cxr.serving import serve; serve(sys.argv[1], port=int(sys.argv[2]), "
        f"model_name={MODEL_NAME!r}, log_level='warning', api_key='page-key')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(bundle_dir), str(port)])
    try:
        _wait_until_up(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_page_api_key_flow_resends_on_enter_and_on_the_same_file(keyed_server: str) -> None:
    image = {"name": "chest.png", "mimeType": "image/png", "buffer": phantom_png("covid", 3)}
    with chromium_page(1200, 900) as (page, problems):
        posts: list[int] = []
        page.on("response", lambda r: posts.append(r.status) if r.url.endswith("/explain") else None)
        page.goto(keyed_server + "/")
        expect(page.locator("#key-row")).to_be_visible()
        page.set_input_files("#file-input", files=[image])
        expect(page.locator("#status.error")).to_contain_text("API key")
        page.fill("#api-key", "page-key")
        page.press("#api-key", "Enter")  # re-sends the chosen file with the key
        page.wait_for_selector("#results:not([hidden])", timeout=30_000)
        page.set_input_files("#file-input", files=[image])  # the same file again is sent again
        expect(page.locator("#status")).to_have_text("Done: chest.png.", timeout=30_000)
        page.wait_for_timeout(200)
    assert posts == [401, 200, 200]
    assert [p for p in problems if "401" not in p] == []
