"""Shared helpers of the benchmark scripts: machine description, timing, tables and test data."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def physical_cores() -> int:
    """Physical cores (distinct core ids per socket), falling back to the logical CPU count."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.cpu_count() or 1
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or os.cpu_count() or 1


def load_average() -> str:
    """The 1-minute load average now, with the logical CPU count, e.g. '1.3 on 2 CPUs'."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return "n/a"


def machine() -> dict[str, str]:
    """What the numbers were measured on: date, CPU, cores, load, library versions and GPU."""
    import torch

    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": f"{physical_cores()} physical, {os.cpu_count()} logical",
        "torch threads": torch.get_num_threads(),
        "load (1 min) at start": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = "not installed"
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return info


def print_header(title: str, settings: dict[str, object]) -> None:
    """Print the benchmark's title, the machine and the settings as a two-column table."""
    print(f"\n## {title}\n")  # noqa: T201
    rows = [[k, str(v)] for k, v in {**machine(), **settings}.items()]
    print_table(["", ""], rows)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (numbers formatted by `fmt`), columns padded to line up."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    print(line([str(h) for h in headers]))  # noqa: T201
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")  # noqa: T201
    for row in cells:
        print(line(row))  # noqa: T201
    print(flush=True)  # noqa: T201


def fmt(value: object) -> str:
    """Numbers to 3 significant figures (integers as they are), everything else with str()."""
    if isinstance(value, bool) or not isinstance(value, float | np.floating):
        return str(value)
    if value != value:  # NaN
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if magnitude >= 0.01 or magnitude == 0 else f"{value:.2g}"


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, calling them in turn so that load changes hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return out


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The q-th percentile of `seconds`, in milliseconds."""
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def median(values: Sequence[float]) -> float:
    """statistics.median as a float."""
    return float(statistics.median(values))


def ratio(a: float, b: float) -> str:
    """a / b as 'x.y x'."""
    return f"{a / b:.1f}x" if b > 0 else "-"


def verdict(ok: bool) -> str:
    """'met' or 'MISSED'."""
    return "met" if ok else "MISSED"


def naive_transform(size: int):
    """The notebook preprocessing: torchvision Resize, ToTensor and ImageNet Normalize of a PIL image."""
    from torchvision import transforms

    from covid_cxr.data.spec import IMAGENET_MEAN, IMAGENET_STD

    return transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class DecodeEveryEpoch:
    """The naive Dataset: every item is opened with PIL, converted to RGB, resized and normalised again."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], size: int) -> None:
        import torch

        self.paths, self.labels = list(paths), torch.tensor(np.array(labels), dtype=torch.long)
        self.transform = naive_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def chest_png(path: Path, size: int, seed: int = 0) -> Path:
    """Write one synthetic chest phantom as a `size` x `size` 8-bit grey PNG at `path`."""
    from covid_cxr.data.synthetic import render_phantom

    image, _, _ = render_phantom("covid", np.random.default_rng(seed), size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")
    return path


def random_bundle(
    arch: str, size: int, out: Path, classes: Sequence[str] = ("covid", "normal", "viral")
) -> Path:
    """A bundle of `arch` at `size` px with random weights (speed does not depend on the weights)."""
    import torch

    from covid_cxr.bundle import write_bundle
    from covid_cxr.config import ModelConfig, RunConfig
    from covid_cxr.data.spec import Preprocess
    from covid_cxr.models.zoo import build_model

    spec = Preprocess(size=size, channels=3, normalize="imagenet")
    torch.manual_seed(0)
    model = build_model(arch, None, len(classes), image_size=size, in_chans=3).eval()
    config = RunConfig(name="bench", preprocess=spec, model=ModelConfig(arch=arch))
    return write_bundle(out, model, config, list(classes), spec, {}, "benchmark")
