"""Images that are not chest radiographs, to check an OOD detector and the gate: written to a folder.

Photographs and other images that scikit-image ships (``skimage.data``; only those that load without
the optional ``pooch`` download; scikit-image is a test extra), the CT and MR slices that pydicom
ships (read as files, through covid-cxr's own DICOM reader), random noise and a rendered page of text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

SKIMAGE = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip
DICOM = ("CT_small.dcm", "MR_small.dcm")
FACES = (0, 50, 100)  # of skimage's 200 25 x 25 faces (lfw_subset)
WORDS = "the chest radiograph shows no focal consolidation effusion or pneumothorax heart size normal".split()


def non_chest_images(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write the PNGs under `folder`; their paths and those of pydicom's DICOM files, in a fixed order."""
    from pydicom.data import get_testdata_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {**_skimage(seed), **_noise(rng), "text_page": _text_page(rng)}
    paths = []
    for name, array in arrays.items():
        Image.fromarray(_uint8(array)).save(out / f"{name}.png")
        paths.append(out / f"{name}.png")
    return paths + [Path(get_testdata_file(name)) for name in DICOM]


def _skimage(seed: int) -> dict[str, np.ndarray]:
    import skimage.data as data

    arrays: dict[str, np.ndarray] = {"binary_blobs": data.binary_blobs(rng=seed)}
    for name in SKIMAGE:
        try:
            arrays[name] = getattr(data, name)()
        except ImportError:  # needs pooch in this scikit-image version
            log.info("skimage.data.%s skipped: needs a download", name)
    left, right, _ = data.stereo_motorcycle()
    faces = data.lfw_subset()
    arrays |= {"motorcycle_left": left, "motorcycle_right": right}
    return arrays | {f"face_{i}": faces[i] for i in FACES}


def _noise(rng: np.random.Generator) -> dict[str, np.ndarray]:
    smooth = cv2.GaussianBlur(rng.random((256, 256)).astype(np.float32), (0, 0), 8)
    return {
        "noise_uniform_grey": rng.integers(0, 256, (256, 256)),
        "noise_uniform_rgb": rng.integers(0, 256, (256, 256, 3)),
        "noise_gaussian_grey": rng.normal(128, 40, (256, 256)),
        "noise_smooth_grey": (smooth - smooth.min()) / (smooth.max() - smooth.min()),
    }


def _text_page(rng: np.random.Generator) -> np.ndarray:
    """A 512 x 640 white page with 40 lines of black text."""
    page = Image.new("L", (512, 640), 255)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=14)
    for row in range(40):
        draw.text((20, 10 + 15 * row), " ".join(rng.choice(WORDS, 8)), fill=0, font=font)
    return np.asarray(page)


def _uint8(array: np.ndarray) -> np.ndarray:
    """Bool, float (any range) or integer arrays as uint8: booleans 0/255, floats stretched to 0..255."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() <= 255:
        return a.astype(np.uint8)
    a = a.astype(np.float64)
    return np.round(255 * (a - a.min()) / max(a.max() - a.min(), 1e-12)).astype(np.uint8)
