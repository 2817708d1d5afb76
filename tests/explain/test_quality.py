"""Localisation (energy in the lesion mask, pointing game) and ROAD faithfulness of CAMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from covid_cxr.bundle_info import BundleInfo
from covid_cxr.config import HeadConfig
from covid_cxr.data.preprocess import preprocess
from covid_cxr.data.spec import Preprocess
from covid_cxr.data.synthetic import render_phantom
from covid_cxr.errors import DataError
from covid_cxr.explain import CamModel, energy_in_mask, explanation_quality, faithfulness, pointing_game
from covid_cxr.explain.cam import compute_heatmap
from covid_cxr.models.zoo import build_model
from covid_cxr.predictor import Predictor

LESION_CLASSES = ["covid", "viral", "bacterial"]
SIZE = 64


def square_mask(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_energy_in_mask_is_the_share_of_heat_inside() -> None:
    heat = np.zeros((10, 12), np.float32)
    heat[2, 3], heat[5, 5], heat[8, 10] = 1.0, 3.0, 4.0
    assert energy_in_mask(heat, square_mask(heat.shape, 4, 4, 3)) == pytest.approx(3 / 8)
    assert energy_in_mask(heat, np.ones(heat.shape, bool)) == pytest.approx(1.0)
    assert energy_in_mask(heat, np.zeros(heat.shape, bool)) == 0.0
    assert energy_in_mask(np.zeros((10, 12)), square_mask(heat.shape, 0, 0, 5)) == 0.0
    uniform = np.full((10, 12), 0.5)
    assert energy_in_mask(uniform, square_mask(uniform.shape, 0, 0, 6)) == pytest.approx(36 / 120)


def test_pointing_game_uses_the_maximum_and_the_tolerance() -> None:
    heat = np.zeros((20, 20), np.float32)
    heat[10, 10] = 1.0
    heat[2, 2] = 0.9
    assert pointing_game(heat, square_mask(heat.shape, 9, 9, 3), tolerance_px=0)
    assert not pointing_game(heat, square_mask(heat.shape, 0, 0, 5), tolerance_px=0)  # only the runner-up
    beside = square_mask(heat.shape, 10, 13, 2)  # 3 px to the right of the maximum
    assert not pointing_game(heat, beside, tolerance_px=2)
    assert pointing_game(heat, beside, tolerance_px=3)
    far_diagonal = square_mask(heat.shape, 14, 14, 2)  # 4 px down and right: 5.7 px away
    assert not pointing_game(heat, far_diagonal, tolerance_px=4)
    assert pointing_game(heat, far_diagonal, tolerance_px=6)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="same shape"):
        energy_in_mask(np.zeros((4, 4)), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="negative"):
        pointing_game(-np.ones((4, 4)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="tolerance_px"):
        pointing_game(np.ones((4, 4)), np.ones((4, 4), bool), tolerance_px=-1)


def phantoms(n: int, seed: int, classes: list[str] = LESION_CLASSES) -> tuple[list, list, list[int]]:
    """n phantoms at 64 px, classes in turn: images, lesion masks, label indices."""
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    for i in range(n):
        image, lesion, _ = render_phantom(classes[i % len(classes)], rng, SIZE)
        images.append(image)
        masks.append(lesion)
        labels.append(i % len(classes))
    return images, masks, labels


def random_convnet() -> CamModel:
    torch.manual_seed(2)
    model = build_model("convnet", num_classes=3, image_size=SIZE, in_chans=1)
    return CamModel(model, Preprocess(size=SIZE, channels=1), LESION_CLASSES)


def test_explanation_quality_aggregates_per_image_scores() -> None:
    subject = random_convnet()
    images, masks, labels = phantoms(4, seed=1)
    normal, normal_mask, _ = render_phantom("normal", np.random.default_rng(9), SIZE)
    result = explanation_quality(
        subject, [*images, normal], [*masks, normal_mask], targets=[*labels, 0], tolerance_px=2
    )
    heats = [compute_heatmap(subject, im, "gradcam", t)[2] for im, t in zip(images, labels, strict=True)]
    energy = np.mean([energy_in_mask(h, m) for h, m in zip(heats, masks, strict=True)])
    share = np.mean([m.mean() for m in masks])
    assert result["images"] == 4 and result["skipped_empty_masks"] == 1
    assert result["energy_in_mask"] == pytest.approx(energy)
    assert result["lesion_share"] == pytest.approx(share)
    assert result["energy_ratio"] == pytest.approx(energy / share)
    hits = [pointing_game(h, m, 2) for h, m in zip(heats, masks, strict=True)]
    assert result["pointing_hit_rate"] == pytest.approx(np.mean(hits))
    with pytest.raises(DataError, match="none of the 1 lesion masks"):
        explanation_quality(subject, [normal], [normal_mask])
    with pytest.raises(ValueError, match="one per image"):
        explanation_quality(subject, images, masks[:2])


def test_faithfulness_is_seeded_and_leaves_the_global_rng_alone() -> None:
    subject = random_convnet()
    images, _, _ = phantoms(3, seed=2)
    state = torch.get_rng_state()
    first = faithfulness(subject, images, "gradcam", percentiles=(30, 70))
    assert torch.equal(torch.get_rng_state(), state)
    assert np.isfinite(first) and -1.0 <= first <= 1.0
    assert faithfulness(subject, images, "gradcam", percentiles=(30, 70)) == first


def train_phantom_cnn(
    images: list[np.ndarray], labels: list[int], spec: Preprocess, epochs: int = 12
) -> nn.Module:
    """A four-block CNN (GAP head) trained with plain torch; BatchNorm statistics recomputed at the end."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width_in = 1
    for i, width in enumerate((8, 16, 32, 32)):
        layers += [nn.Conv2d(width_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if i < 3 else []
        width_in = width
    head = nn.Linear(width_in, len(LESION_CLASSES))
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.stack([preprocess(image, spec) for image in images])
    y = torch.tensor(labels)
    batches = (len(x) + 31) // 32
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * batches)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            schedule.step()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over one pass of the training set
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> tuple[Predictor, tuple[list, list, list[int]]]:
    spec = Preprocess(size=SIZE, channels=1, normalize="unit")
    train_images, _, train_labels = phantoms(240, seed=0)
    model = train_phantom_cnn(train_images, train_labels, spec)
    info = BundleInfo(
        class_names=LESION_CLASSES,
        arch="phantom-cnn",
        head=HeadConfig(),
        preprocess=spec,
        files={"model.pt": ""},
    )
    return Predictor(model, info, backend="torch"), phantoms(60, seed=1)


@pytest.mark.slow
def test_cams_of_an_accurate_model_concentrate_on_the_lesions(trained: tuple) -> None:
    predictor, (images, masks, labels) = trained
    accuracy = float(np.mean(predictor.predict_proba(images).argmax(axis=1) == np.array(labels)))
    assert accuracy >= 0.9
    for method in ("gradcam", "guided"):
        result = explanation_quality(predictor, images, masks, method, targets=labels, tolerance_px=3)
        assert result["images"] == 60
        assert result["energy_in_mask"] >= 1.5 * result["lesion_share"], result
        assert result["energy_ratio"] >= 1.5
    assert faithfulness(predictor, images[:12], "gradcam", targets=labels[:12]) > 0
