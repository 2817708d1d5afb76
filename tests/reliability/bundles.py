"""Tiny bundles for reliability tests: a random convnet without, and with, an OOD detector and q-hat."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from covid_cxr.bundle import load_bundle, store_reliability, write_bundle
from covid_cxr.bundle_info import OOD_FORMAT, ConformalInfo, OodInfo
from covid_cxr.config import HeadConfig, ModelConfig, RunConfig
from covid_cxr.data.preprocess import normalize, prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.data.synthetic import render_phantom
from covid_cxr.models.zoo import build_model
from covid_cxr.reliability.ood import fit_detector, threshold

CLASSES = ["covid", "normal", "viral"]
SPEC = Preprocess(size=64, channels=1, normalize="unit")


def phantoms(n: int, seed: int) -> list[np.ndarray]:
    """`n` 128 px phantoms, classes in turn."""
    rng = np.random.default_rng(seed)
    return [render_phantom(CLASSES[i % 3], rng, 128)[0] for i in range(n)]


def plain_bundle(folder: Path) -> Path:
    """A random convnet bundle with model.onnx and no OOD detector or conformal record (an older bundle)."""
    torch.manual_seed(0)
    head = HeadConfig(pooling="gap")
    model = build_model("convnet", head, 3, image_size=SPEC.size, in_chans=1).eval()
    cfg = RunConfig(name="rel", preprocess=SPEC, model=ModelConfig(arch="convnet", head=head))
    return write_bundle(folder, model, cfg, CLASSES, SPEC, {}, "fp")


def fitted_bundle(plain: Path, folder: Path) -> Path:
    """A copy of `plain` with a detector fitted on 60 phantoms' features (threshold: 99 % of 30 more)
    and a conformal q-hat of 0.5 (LAC: the classes of probability at least 0.5)."""
    predictor = load_bundle(plain, backend="torch")
    x = normalize(np.stack([prepare(im, SPEC) for im in phantoms(90, 0)]), SPEC)
    _, features = predictor.predict_outputs(x)
    detector = fit_detector(features[:60], np.arange(60) % 3)
    ood = OodInfo(
        format=OOD_FORMAT, threshold=threshold(detector.score(features[60:]), 0.99), n_train=60, n_val=30
    )
    shutil.copytree(plain, folder)
    store_reliability(folder, ood, detector.arrays, ConformalInfo(qhat=0.5, n_val=30))
    return folder
