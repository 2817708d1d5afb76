"""The clinician page in Debian's headless chromium: upload and drop an image, see bars and overlay, or the
alert that the model abstains."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_cxr.config import RunConfig
from covid_cxr.data.synthetic import render_phantom, synthesize
from covid_cxr.training.train import train_run
from tests.conftest import chromium_page
from tests.serving.conftest import CLASSES, serving

SCREENSHOT = Path("/tmp/page.png")
VIEWPORTS = {"": (1280, 800), "-phone": (390, 844)}  # screenshot suffix: (width, height)
ALERT = "Outside what this model was trained on: do not interpret"

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
        expect(page.locator("#no-check")).to_contain_text(  # this bundle has no OOD detector
            "This model has no out-of-distribution check; results on unfamiliar images are not flagged."
        )
        assert page.locator("#abstain").is_hidden() and page.locator("#prediction-set").is_hidden()
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
    with serving(bundle_dir, ", api_key='page-key'") as (url, _):
        yield url


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


@pytest.fixture(scope="module")
def reliable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """serve() of a ConvNet trained on 240 phantoms at 64 px (test accuracy 1.0, about 25 s), with the OOD
    detector and the 90 % conformal sets that training fits."""
    root = tmp_path_factory.mktemp("reliable")
    cfg = RunConfig.model_validate(
        {
            "name": "page-reliable",
            "preprocess": {"size": 64, "channels": 1, "normalize": "dataset"},
            "model": {"arch": "convnet", "head": {"pooling": "avg4_flatten", "hidden": [64]}},
            "optim": {"lr": 3e-3},
            "data": {"test_fraction": 0.25},
            "train": {"epochs": 12, "batch_size": 16, "accelerator": "cpu", "seed": 1},
        }
    )
    synthesize(root / "data", n=240, size=64, seed=1)
    train_run(cfg, root / "data", root / "run", progress=False, cache_dir=root / "cache")
    with serving(root / "run" / "bundle") as (url, _):
        yield url


def noise_png(size: int = 256) -> bytes:
    """Colour noise as PNG bytes: the gate calls it not greyscale and the OOD detector flags it."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def upload(page: object, name: str, data: bytes) -> None:
    """Choose a PNG in the file input and wait for its result."""
    page.set_input_files("#file-input", files=[{"name": name, "mimeType": "image/png", "buffer": data}])
    expect(page.locator("#status")).to_have_text(f"Done: {name}.", timeout=30_000)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", VIEWPORTS)
def test_page_abstains_on_noise_with_reasons_and_no_bars(reliable_server: str, suffix: str) -> None:
    with chromium_page(*VIEWPORTS[suffix]) as (page, problems):
        page.goto(reliable_server + "/")
        upload(page, "noise.png", noise_png())
        alert = page.get_by_role("alert")
        expect(alert).to_be_visible()
        expect(alert).to_contain_text(ALERT)
        reasons = page.locator("#abstain-reasons li").all_inner_texts()
        assert "a colour image, not a greyscale radiograph" in reasons
        ood = [r for r in reasons if r.startswith("unlike the images the model was trained on (OOD score ")]
        assert len(ood) == 1 and " above threshold " in ood[0]
        expect(page.locator("#bars")).to_be_hidden()
        rows = page.locator(".bar-row")
        assert rows.count() == 3 and not any(row.is_visible() for row in rows.all())
        expect(page.locator("#overlay")).to_be_hidden()  # no heat map presented as explaining a diagnosis
        expect(page.locator("#original")).to_be_visible()
        assert page.locator("#no-check").is_hidden()  # this bundle has its OOD detector and sets
        page.screenshot(path=f"/tmp/page-abstain{suffix}.png", full_page=True)

        anyway = page.locator("#show-anyway")  # the disclosure, collapsed
        expect(anyway).to_have_text("Show the probabilities anyway (research only)")
        expect(anyway).to_have_attribute("aria-expanded", "false")
        anyway.click()
        expect(page.locator("#bars")).to_be_visible()
        expect(page.locator("#anyway-note")).to_contain_text("these numbers are not a result")
        expect(anyway).to_have_attribute("aria-expanded", "true")
        expect(anyway).to_have_text("Hide the probabilities")
        page.screenshot(path=f"/tmp/page-abstain-shown{suffix}.png", full_page=True)
        anyway.click()
        expect(page.locator("#bars")).to_be_hidden()

        upload(page, "covid.png", phantom_png("covid", 7, size=256))  # the next image starts clean
        expect(page.locator("#abstain")).to_be_hidden()
        expect(page.locator("#bars")).to_be_visible()
    assert problems == []


@pytest.mark.slow
@pytest.mark.parametrize("suffix", VIEWPORTS)
def test_page_shows_bars_and_prediction_set_on_a_familiar_phantom(reliable_server: str, suffix: str) -> None:
    with chromium_page(*VIEWPORTS[suffix]) as (page, problems):
        page.goto(reliable_server + "/")
        upload(page, "covid.png", phantom_png("covid", 7, size=256))
        expect(page.locator("#prediction-set")).to_have_text("Prediction set at 90% coverage: {covid}")
        assert page.locator(".bar-row.top .bar-label").inner_text() == "covid"
        assert all(row.is_visible() for row in page.locator(".bar-row").all())
        expect(page.locator("#overlay")).to_be_visible()
        for hidden in ("#abstain", "#show-anyway", "#no-check", "#anyway-note"):
            expect(page.locator(hidden)).to_be_hidden()
        page.screenshot(path=f"/tmp/page-ok{suffix}.png", full_page=True)
    assert problems == []
