"""Run the shipped lung segmenter on the classification sets and draw docs/lungs.png.

Usage: python docs/lungs_figure.py ../shared/data docs/lungs.png
Prints, per set, how many images got two plausible lungs (`covid_cxr.lungs.lung_stats`: two
components, each 3-40 % of the image, one either side of the vertical centre line) and the rest by
reason; the figure shows random plausible cases of each set and then the worst ones.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from covid_cxr.data.manifest import is_image_file  # noqa: E402
from covid_cxr.lungs.predict import predict_files  # noqa: E402

SETS = {
    "radiography-224 COVID": "radiography-224/COVID",
    "figure1 (full size)": "figure1/images",
    "kermany-224 test (paediatric)": "kermany-224/test",
}


def main(shared: Path, figure: Path) -> None:
    """Segment each set, print the plausibility table, save the grid."""
    shown: list[tuple[str, dict]] = []
    worst: list[tuple[str, dict]] = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in SETS.items():
            files = sorted(p for p in (shared / folder).rglob("*") if is_image_file(p))
            results = predict_files(files, Path(tmp) / name, with_overlay=True)
            bad = [r for r in results if r["quality"] != "ok"]
            share = 1 - len(bad) / len(results)
            print(f"| {name} | {len(results)} | {len(results) - len(bad)} | {share:.1%} |")  # noqa: T201
            for item in bad:
                name_, area = Path(item["path"]).name, item["area_fraction"]
                print(f"|   {name_} | {item['quality']} | lungs {area:.2f} |")  # noqa: T201
            good = [r for r in results if r["quality"] == "ok"]
            shown += [(name, good[i]) for i in rng.choice(len(good), size=min(4, len(good)), replace=False)]
            worst += [(name, r) for r in bad]
            for item in results:
                item["picture"] = np.asarray(Image.open(item["overlay"]))
        _grid(shown + worst[:8], figure)


def _grid(items: list[tuple[str, dict]], figure: Path) -> None:
    """Four overlays per row, titled with the set, the area fraction and the quality flag."""
    rows = -(-len(items) // 4)
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3.2 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (name, item) in zip(np.ravel(axes), items, strict=False):
        ax.imshow(item["picture"])
        flag = item["quality"] if item["quality"] == "ok" else f"\nFAIL: {item['quality']}"
        title = f"{name}\n{Path(item['path']).name}, lungs {item['area_fraction']:.0%}, {flag}"
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(figure, dpi=80)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
