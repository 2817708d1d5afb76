"""Shared fixtures: the real data folder (skipped when absent) and quiet, deterministic torch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVID_CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when it is not there (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium, headless, as root, on a machine with no outside network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium_page(width: int, height: int) -> Iterator[tuple[object, list[str]]]:
    """A page in headless Debian chromium and the list its console errors and page errors land in."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            yield page, problems
        finally:
            browser.close()


@pytest.fixture(scope="session")
def plain_reliability_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 64 px convnet bundle without an OOD detector or conformal sets (an older bundle)."""
    from tests.reliability.bundles import plain_bundle

    return plain_bundle(tmp_path_factory.mktemp("plain") / "bundle")


@pytest.fixture(scope="session")
def reliability_bundle(plain_reliability_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same bundle with an OOD detector fitted on phantoms and a conformal q-hat of 0.5."""
    from tests.reliability.bundles import fitted_bundle

    return fitted_bundle(plain_reliability_bundle, tmp_path_factory.mktemp("fitted") / "bundle")
