"""The LightningModule: a thin training wrapper around a built model (or just its head)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from covid_cxr.config import OptimConfig, ReduceLROnPlateauConfig

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class CxrModule(L.LightningModule):
    """Cross-entropy training of `model` (a Classifier, or its head on cached features).

    Logs `{train,val,test}_loss` and `{train,val,test}_accuracy` per epoch. A one-logit output
    (sigmoid head) uses BCE-with-logits; `class_weights` (one per class) weight either loss.
    Frozen parts stay in eval mode while training (BatchNorm statistics and dropout untouched).

    Example:
        >>> module = CxrModule(build_model("mobilenet_v2", HeadConfig(), 3), OptimConfig(lr=1e-3))
        >>> L.Trainer(max_epochs=1).fit(module, datamodule=dm)
    """

    def __init__(
        self,
        model: nn.Module,
        optim: OptimConfig | None = None,
        reduce_lr: ReduceLROnPlateauConfig | None = None,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim or OptimConfig()
        self.reduce_lr = reduce_lr
        self.lr = self.optim.lr
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights)
        self.save_hyperparameters(
            {
                "optim": self.optim.model_dump(),
                "reduce_lr": reduce_lr and reduce_lr.model_dump(),
                "class_weights": list(class_weights) if class_weights is not None else None,
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        """Keep frozen parts in eval mode (Lightning switched everything to train mode)."""
        for module in frozen_modules(self.model):
            module.eval()

    def configure_optimizers(self) -> dict:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = _OPTIMIZERS[self.optim.name](params, lr=self.lr, weight_decay=self.optim.weight_decay)
        if self.reduce_lr is None:
            return {"optimizer": optimizer}
        cfg = self.reduce_lr
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=cfg.mode,
            factor=cfg.factor,
            patience=cfg.patience,
            threshold=cfg.min_delta,
            threshold_mode="abs",
            min_lr=cfg.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": cfg.monitor, "interval": "epoch"},
        }

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = classification_loss(logits, y, self.class_weights)
        metrics = {f"{stage}_loss": loss, f"{stage}_accuracy": accuracy(logits, y)}
        self.log_dict(
            metrics,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=stage != "train",
        )
        return loss


def classification_loss(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy, or BCE-with-logits for one logit (class 1 positive); Keras-style class weights."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        per_sample = F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction="none")
    else:
        per_sample = F.cross_entropy(logits, y, reduction="none")
    return (per_sample * weights[y]).mean() if weights is not None else per_sample.mean()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of rows whose predicted class (argmax, or logit > 0 for one logit) equals y."""
    pred = (logits[:, 0] > 0).long() if logits.shape[-1] == 1 else logits.argmax(dim=-1)
    return (pred == y).float().mean()


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """A fully frozen backbone, or else every normalisation layer whose parameters are all frozen."""
    backbone = getattr(model, "backbone", None)
    if backbone is not None and _all_frozen(backbone):
        return [backbone]
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and _all_frozen(m)]


def _all_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)
