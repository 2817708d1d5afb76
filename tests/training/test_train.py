"""Training engine: phantom accuracy, the run folder, k-fold, LR finder, module, DataModule, augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from covid_cxr.bundle import load_bundle
from covid_cxr.config import AugmentConfig, RunConfig
from covid_cxr.data.augment import TensorAugment
from covid_cxr.data.datamodule import CxrDataModule
from covid_cxr.data.images import load_image
from covid_cxr.data.preprocess import dataset_stats, normalize, prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.data.synthetic import synthesize
from covid_cxr.errors import DataError
from covid_cxr.models.module import accuracy, classification_loss, frozen_modules
from covid_cxr.models.zoo import build_model
from covid_cxr.training.callbacks import METRIC_COLUMNS
from covid_cxr.training.curves import plot_curves
from covid_cxr.training.lr_find import lr_find
from covid_cxr.training.train import select_classes, train_run

EPOCHS = 8


def _config(**parts: dict) -> RunConfig:
    base = {
        "name": "phantoms",
        "preprocess": {"size": 64, "channels": 1, "normalize": "dataset"},
        "model": {"arch": "convnet", "head": {"pooling": "avg4_flatten", "hidden": [64]}},
        "optim": {"lr": 3e-3},
        "train": {"epochs": EPOCHS, "batch_size": 32, "accelerator": "cpu", "seed": 11},
    }
    for key, value in parts.items():
        base[key] = {**base.get(key, {}), **value}
    return RunConfig.model_validate(base)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path, object]:
    """300 three-class phantoms at 64 px, the seed-004 ConvNet trained for a few epochs on the CPU."""
    root = tmp_path_factory.mktemp("accuracy")
    synthesize(root / "data", n=300, size=64, seed=2)
    cfg = _config(data={"test_fraction": 0.2})
    result = train_run(cfg, root / "data", root / "run", progress=False, cache_dir=root / "cache")
    return cfg, root / "run", result


@pytest.mark.slow
def test_phantoms_are_learned_to_high_test_accuracy(phantom_run) -> None:
    _, out, result = phantom_run
    assert result.metrics["test_accuracy"] >= 0.9
    assert result.metrics["n_test"] >= 50


@pytest.mark.slow
def test_run_folder_holds_every_artifact(phantom_run) -> None:
    _, out, result = phantom_run
    for name in (
        "config.yaml",
        "manifest.csv",
        "checks.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.csv",
        "curves.png",
        "test_metrics.json",
        "bundle/bundle.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "test_metrics.json").read_text()) == result.metrics
    assert json.loads((out / "checks.json").read_text())["n_images"] == 300
    with Image.open(out / "curves.png") as png:
        assert png.format == "PNG" and png.width > png.height


@pytest.mark.slow
def test_config_holds_the_train_split_statistics(phantom_run) -> None:
    _, out, _ = phantom_run
    manifest = pd.read_csv(out / "manifest.csv")
    spec = Preprocess(size=64, channels=1)
    train = np.stack(
        [prepare(load_image(p), spec) for p in manifest.loc[manifest["split"] == "train", "path"]]
    )
    mean, std = dataset_stats(train)
    saved = yaml.safe_load((out / "config.yaml").read_text())["preprocess"]
    np.testing.assert_allclose(saved["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(saved["std"], std, rtol=1e-6)


@pytest.mark.slow
def test_manifest_splits_keep_patients_apart(phantom_run) -> None:
    _, out, _ = phantom_run
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1


@pytest.mark.slow
def test_metrics_csv_has_one_row_per_epoch_and_best_checkpoint_is_lowest_val_loss(phantom_run) -> None:
    cfg, out, _ = phantom_run
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert metrics["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert (metrics["lr"] == cfg.optim.lr).all()
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert best["epoch"] + 1 == metrics.loc[metrics["val_loss"].idxmin(), "epoch"]
    assert last["epoch"] + 1 == EPOCHS


@pytest.mark.slow
def test_bundle_reproduces_the_test_accuracy(phantom_run) -> None:
    _, out, result = phantom_run
    manifest = pd.read_csv(out / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    predictor = load_bundle(out / "bundle")
    probs = predictor.predict_proba(test["path"].tolist())
    predicted = np.array(predictor.classes)[probs.argmax(axis=1)]
    assert np.mean(predicted == test["label"].to_numpy()) == pytest.approx(
        result.metrics["test_accuracy"], abs=1e-6
    )


@pytest.mark.slow
def test_kfold_with_sigmoid_head_class_weights_and_augmentation(tmp_path: Path) -> None:
    synthesize(tmp_path / "data", n=45, size=32, seed=4)
    cfg = _config(
        data={"classes": ["normal", "covid"], "balance": "class_weights", "test_fraction": 0.2},
        preprocess={"size": 32},
        augment={"rotation": 10, "width_shift": 0.1, "horizontal_flip": True, "channel_shift": 10},
        model={"head": {"pooling": "avg4_flatten", "hidden": [16], "output": "sigmoid"}},
        train={"epochs": 1, "batch_size": 8},
    )
    result = train_run(
        cfg, tmp_path / "data", tmp_path / "cv", folds=2, progress=False, cache_dir=tmp_path / "c"
    )

    cv = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    accs = [fold["test_accuracy"] for fold in cv["folds"]]
    assert len(accs) == 2
    assert cv["summary"]["test_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert cv["summary"]["test_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    top = pd.read_csv(tmp_path / "cv" / "manifest.csv")
    assert set(top["label"]) == {"normal", "covid"}
    folds = [pd.read_csv(tmp_path / "cv" / f"fold-{i}" / "manifest.csv") for i in (1, 2)]
    vals = [set(f.loc[f["split"] == "val", "path"]) for f in folds]
    assert not vals[0] & vals[1]
    assert vals[0] | vals[1] == set(top.loc[top["split"] != "test", "path"])
    for fold in folds:
        assert set(fold.loc[fold["split"] == "test", "path"]) == set(top.loc[top["split"] == "test", "path"])
    predictor = load_bundle(result.folds[0].bundle)
    assert predictor.classes == ["normal", "covid"]
    probs = predictor.predict_proba(top["path"].head(3).tolist())
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_lr_find_suggests_a_rate_and_plots_it(tmp_path: Path) -> None:
    synthesize(tmp_path / "data", n=30, size=32, seed=6)
    cfg = _config(preprocess={"size": 32}, train={"batch_size": 8})
    lr, plot = lr_find(cfg, tmp_path / "data", tmp_path / "lr", num_training=60, cache_dir=tmp_path / "c")
    assert 1e-7 < lr < 1.0
    assert plot == tmp_path / "lr" / "lr_find.png"
    with Image.open(plot) as png:
        assert png.format == "PNG"


def test_select_classes_keeps_requested_labels_and_names_missing_ones() -> None:
    frame = pd.DataFrame({"label": ["a", "b", "c", "a"], "path": list("wxyz")})
    assert select_classes(frame, ["a", "c"])["path"].tolist() == ["w", "y", "z"]
    assert select_classes(frame, None) is frame
    with pytest.raises(DataError, match="'d'"):
        select_classes(frame, ["a", "d"])


def test_losses_match_torch_definitions() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(classification_loss(logits, y), F.cross_entropy(logits, y))
    expected = (F.cross_entropy(logits, y, reduction="none") * w[y]).mean()
    assert torch.allclose(classification_loss(logits, y, w), expected)
    one, yb = torch.randn(6, 1), torch.tensor([0, 1, 1, 0, 1, 0])
    assert torch.allclose(
        classification_loss(one, yb), F.binary_cross_entropy_with_logits(one[:, 0], yb.float())
    )
    assert accuracy(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 0, 0])).item() == pytest.approx(
        2 / 3
    )
    assert accuracy(logits, logits.argmax(dim=1)).item() == 1.0


def test_frozen_modules_keep_a_frozen_backbone_in_eval() -> None:
    model = build_model("convnet", None, 3, "none", "all", image_size=32)
    assert frozen_modules(model) == [model.backbone]
    assert frozen_modules(build_model("convnet", None, 3, "none", "none", image_size=32)) == []


def test_sampler_balances_an_imbalanced_train_split() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    dm = CxrDataModule(
        torch.zeros(100, 2),
        labels,
        {"train": np.arange(100), "val": np.arange(5)},
        batch_size=100,
        seed=1,
        balance_sampler=True,
    )
    drawn = torch.cat([y for _ in range(20) for _, y in dm.train_dataloader()])
    assert 0.4 < drawn.float().mean().item() < 0.6


def test_loader_order_is_seeded() -> None:
    dm = CxrDataModule(
        torch.arange(50).float()[:, None],
        np.zeros(50, int),
        {"train": np.arange(50), "val": np.arange(5)},
        batch_size=50,
        seed=3,
    )
    first = next(iter(dm.train_dataloader()))[0]
    again = next(
        iter(CxrDataModule(dm.inputs, dm.labels, dm.splits, batch_size=50, seed=3).train_dataloader())
    )[0]
    assert torch.equal(first, again) and not torch.equal(first[:, 0], torch.arange(50).float())


def test_eval_batches_are_normalised_channels_last_without_augmentation() -> None:
    spec = Preprocess(size=16, channels=3, normalize="imagenet")
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    augment = TensorAugment(AugmentConfig(rotation=30, horizontal_flip=True), spec)
    dm = CxrDataModule(
        images,
        np.zeros(4, int),
        {"train": np.arange(4), "val": np.arange(4)},
        prepare=lambda x: normalize(x, spec),
        augment=augment,
    )
    x, _ = dm.on_after_batch_transfer((torch.from_numpy(images), torch.zeros(4)), 0)
    assert torch.equal(x, normalize(images, spec))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_draws_per_image_and_leaves_input_alone() -> None:
    spec = Preprocess(size=32, channels=1, normalize="dataset", mean=(0.5,), std=(0.25,))
    augment = TensorAugment(AugmentConfig(rotation=40, zoom=0.2, shear=10, channel_shift=30), spec)
    image = normalize(np.random.default_rng(1).integers(0, 256, (1, 32, 32, 1), dtype=np.uint8), spec)
    batch = image.repeat(2, 1, 1, 1)
    copy = batch.clone()
    torch.manual_seed(0)
    out = augment(batch)
    assert torch.equal(batch, copy)
    assert out.shape == batch.shape
    assert not torch.allclose(out[0], out[1])
    torch.manual_seed(0)
    assert torch.equal(augment(batch), out)


def test_channel_shift_moves_pixels_in_pixel_units() -> None:
    spec = Preprocess(size=8, channels=1, normalize="dataset", mean=(0.5,), std=(0.25,))
    augment = TensorAugment(AugmentConfig(channel_shift=20), spec)
    image = normalize(np.full((1, 8, 8, 1), 100, dtype=np.uint8), spec)
    image[..., 0, 0] = normalize(np.zeros((1, 1, 1, 1), dtype=np.uint8), spec).flatten()  # a dark pixel
    image[..., 0, 1] = normalize(np.full((1, 1, 1, 1), 255, dtype=np.uint8), spec).flatten()  # a bright one
    shifted = augment(image)
    delta = (shifted - image)[..., 2:, 2:] * 255 * 0.25  # back to pixel units
    assert delta.abs().max() <= 20 + 1e-4
    assert torch.allclose(delta, delta.flatten()[0].expand_as(delta))
    assert shifted.min() >= image.min() - 1e-6 and shifted.max() <= image.max() + 1e-6


def test_plot_curves_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="metrics.csv"):
        plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")


@pytest.mark.slow
def test_plateau_schedule_and_early_stopping_follow_the_logged_val_loss(tmp_path: Path) -> None:
    synthesize(tmp_path / "data", n=30, size=32, seed=8)
    plateau = {"monitor": "val_loss", "factor": 0.5, "patience": 0, "min_delta": 0.0}
    stopping = {"monitor": "val_loss", "patience": 2, "min_delta": 0.0, "mode": "min"}
    cfg = _config(
        preprocess={"size": 32},
        optim={"lr": 0.05},
        train={"epochs": 12, "batch_size": 8, "reduce_lr": plateau, "early_stopping": stopping},
    )
    train_run(cfg, tmp_path / "data", tmp_path / "run", progress=False, cache_dir=tmp_path / "c")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")

    lr, best, expected_lr = cfg.optim.lr, float("inf"), []
    for value in metrics["val_loss"]:
        expected_lr.append(lr)
        if value < best:
            best = value
        else:
            lr *= plateau["factor"]
    np.testing.assert_allclose(metrics["lr"], expected_lr, rtol=1e-9)
    assert metrics["lr"].nunique() > 1

    best, wait, stop = float("inf"), 0, cfg.train.epochs
    for epoch, value in zip(metrics["epoch"], metrics["val_loss"], strict=True):
        best, wait = (value, 0) if value < best else (best, wait + 1)
        if wait >= stopping["patience"]:
            stop = epoch
            break
    assert metrics["epoch"].tolist() == list(range(1, stop + 1))


def test_steepest_descent_starts_after_an_early_rise_of_the_running_average() -> None:
    from covid_cxr.training.lr_find import steepest_descent

    lrs = np.logspace(-7, 0, 60)
    x = np.log10(lrs)
    rise = 1.0 - 0.5 * np.exp(-(x + 7) * 3)  # a lucky first batch: the average climbs from 0.5 to 1
    loss = rise - 0.3 * (1 + np.tanh(2 * (x + 2.5))) / 2 + np.where(x > -1, 5 * (x + 1) ** 2, 0)
    suggested = steepest_descent(list(lrs), list(loss))
    assert suggested is not None and 1e-3 < suggested < 1e-2  # the fall centred on 3e-3
