"""Train the lung segmenter's decoder with Lightning: metrics.csv (Dice/IoU per epoch), resume, test figures.

``out/`` receives ``split.csv`` (the fixed split), ``checkpoints/{best,last}.ckpt``, ``metrics.csv``,
``lungs-lite0.pt`` (the shippable decoder, fp16) and ``test.json`` (Dice and IoU per source on the
held-out test split, which neither training nor checkpoint selection ever sees).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from covid_cxr.data.images import load_image
from covid_cxr.io import atomic_write_text
from covid_cxr.lungs.data import LungPairs, load_pairs, read_pairs, resize_mask
from covid_cxr.lungs.model import LungNet
from covid_cxr.lungs.segmenter import WEIGHTS_FILE, LungSegmenter, save_weights
from covid_cxr.training.callbacks import AtomicCheckpointIO

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_dice", "val_loss", "val_dice", "val_iou", "lr"]
STORE_SIZE = 256  # images are decoded once at this size, augmented, then resized to the input size


@dataclass(frozen=True)
class LungTrainConfig:
    """The recipe of the shipped weights (``covid-cxr lungs train`` defaults)."""

    size: int = 192
    epochs: int = 6
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


class LungModule(L.LightningModule):
    """BCE + soft Dice on the decoder; logs loss, Dice and IoU (per image, threshold 0.5)."""

    def __init__(self, cfg: LungTrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = LungNet(imagenet=True)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        prob = torch.sigmoid(logits)
        soft = 1 - (2 * (prob * y).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + soft.mean()
        dice, iou = dice_iou(logits.detach() > 0, y > 0.5)
        self.log_dict({f"{stage}_loss": loss, f"{stage}_dice": dice.mean()}, on_epoch=True, on_step=False)
        if stage == "val":
            self.log("val_iou", iou.mean(), on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.decoder.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.cfg.epochs)
        return {"optimizer": opt, "lr_scheduler": sched}


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of boolean (N, ...) masks; an image with both empty scores 1."""
    dims = tuple(range(1, pred.ndim))
    inter = (pred & target).sum(dims).float()
    total = pred.sum(dims).float() + target.sum(dims).float()
    union = total - inter
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return dice, iou


class LungMetricsCsv(L.Callback):
    """``metrics.csv``: one row per finished epoch, rewritten atomically; a resume keeps earlier rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lr = math.nan

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch, logged = trainer.current_epoch + 1, trainer.callback_metrics
        row = {c: float(logged[c]) if c in logged else math.nan for c in METRIC_COLUMNS[1:-1]}
        row["lr"] = self._lr
        old = pd.read_csv(self.path) if self.path.is_file() else pd.DataFrame(columns=METRIC_COLUMNS)
        rows = [*old[old["epoch"] < epoch].to_dict("records"), {"epoch": epoch, **row}]
        atomic_write_text(self.path, pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(index=False))


def train_lungs(
    data: str | Path,
    out: str | Path,
    cfg: LungTrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fit the decoder on the train split, keep the best val Dice, write weights and test figures."""
    cfg, out = cfg or LungTrainConfig(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = read_pairs(data)
    atomic_write_text(out / "split.csv", pairs.to_csv(index=False))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    loaders = {s: _loader(pairs[pairs["split"] == s], cfg, s == "train") for s in ("train", "val")}
    module = LungModule(cfg)
    trainer = _trainer(cfg, out, progress)
    last = out / "checkpoints" / "last.ckpt"
    if not resume:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "metrics.csv").unlink(missing_ok=True)
    with warnings.catch_warnings():  # the frozen encoder is in eval mode on purpose
        warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode")
        ckpt = str(last) if resume and last.is_file() else None
        trainer.fit(module, loaders["train"], loaders["val"], ckpt_path=ckpt)
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(best["state_dict"])
    sha = save_weights(module.net, cfg.size, out / WEIGHTS_FILE)
    figures = {
        "weights_sha256": sha,
        "config": cfg.__dict__,
        **evaluate_pairs(LungSegmenter(module.net.eval(), cfg.size), pairs[pairs["split"] == "test"]),
    }
    atomic_write_text(out / "test.json", json.dumps(figures, indent=2))
    return figures


def evaluate_pairs(segmenter: LungSegmenter, pairs: pd.DataFrame) -> dict:
    """Mean Dice and IoU per source of the segmenter's cleaned masks, at each mask's own size."""
    if pairs.empty:
        return {"per_source": {}, "dice": None, "n": 0}
    rows = []
    for row in pairs.itertuples():
        image, truth = load_image(row.path), load_image(row.mask)
        truth = (truth if truth.ndim == 2 else truth.max(axis=2)) > 127
        pred = segmenter(image)
        pred = resize_mask(pred, truth.shape[1], truth.shape[0]) if pred.shape != truth.shape else pred
        dice, iou = dice_iou(torch.from_numpy(pred[None] > 0), torch.from_numpy(truth[None]))
        rows.append({"source": row.source, "dice": float(dice), "iou": float(iou)})
    frame = pd.DataFrame(rows)
    per = frame.groupby("source").agg(
        n=("dice", "size"), dice=("dice", "mean"), iou=("iou", "mean"), dice_min=("dice", "min")
    )
    return {
        "per_source": {s: {k: round(float(v), 4) for k, v in r.items()} for s, r in per.iterrows()},
        "dice": round(float(frame["dice"].mean()), 4),
        "n": len(frame),
    }


def _loader(frame: pd.DataFrame, cfg: LungTrainConfig, train: bool) -> DataLoader:
    """Images decoded once into memory; augmented on the fly for training."""
    images, masks = load_pairs(frame, STORE_SIZE)
    return DataLoader(
        LungPairs(images, masks, cfg.size, train),
        batch_size=cfg.batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=0,
    )


def _trainer(cfg: LungTrainConfig, out: Path, progress: bool) -> L.Trainer:
    """CPU-friendly Trainer: best (val Dice) and last checkpoints, CSV logs, optional rich progress."""
    callbacks: list[L.Callback] = [
        LungMetricsCsv(out / "metrics.csv"),
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="best",
            monitor="val_dice",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        ModelCheckpoint(dirpath=out / "checkpoints", filename="last", enable_version_counter=False),
    ]
    if progress:
        callbacks.append(RichProgressBar())
    return L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="auto",
        devices=1,
        callbacks=callbacks,
        logger=CSVLogger(out, name="logs"),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=progress,
        log_every_n_steps=1,
        deterministic=False,
    )
