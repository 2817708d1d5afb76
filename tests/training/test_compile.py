"""train.compile: torch.compile trains the same model as eager PyTorch and leaves a normal bundle."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from covid_cxr.bundle import load_bundle
from covid_cxr.config import RunConfig
from covid_cxr.data.synthetic import synthesize
from covid_cxr.training.train import build_stage, train_run


def _config(compile_model: bool) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "compiled" if compile_model else "eager",
            "preprocess": {"size": 32, "channels": 1, "normalize": "dataset"},
            "model": {"arch": "convnet", "head": {"pooling": "avg4_flatten", "hidden": [16]}},
            "train": {
                "epochs": 2,
                "batch_size": 16,
                "accelerator": "cpu",
                "seed": 5,
                "compile": compile_model,
            },
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """The same tiny run twice, eager and compiled, on 64 phantoms at 32 px.

    Inductor draws dropout masks with its own generator; `fallback_random` makes it use eager's, so
    the two runs see the same masks and their losses can be compared.
    """
    root = tmp_path_factory.mktemp("compile")
    synthesize(root / "data", n=64, size=32, seed=3)
    out = {}
    with torch._inductor.config.patch(fallback_random=True):
        for flag in (False, True):
            train_run(
                _config(flag), root / "data", root / str(flag), progress=False, cache_dir=root / "cache"
            )
            out[flag] = root / str(flag)
    return out


@pytest.mark.slow
def test_compiled_training_follows_the_eager_losses(runs) -> None:
    eager = pd.read_csv(runs[False] / "metrics.csv")
    compiled = pd.read_csv(runs[True] / "metrics.csv")
    assert len(eager) == len(compiled) == 2
    for column in ("train_loss", "val_loss"):
        assert compiled[column].to_numpy() == pytest.approx(eager[column].to_numpy(), abs=1e-3)


@pytest.mark.slow
def test_compiled_run_writes_a_bundle_that_predicts_like_eager(runs) -> None:
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    eager, compiled = (load_bundle(runs[flag] / "bundle").predict_tensor(x) for flag in (False, True))
    assert compiled.shape == (8, 3)
    assert compiled == pytest.approx(eager, abs=1e-3)


def test_compile_flag_compiles_only_the_trained_model(tmp_path: Path) -> None:
    manifest = synthesize(tmp_path / "data", n=24, size=32, seed=1)
    manifest["split"] = ["train"] * 16 + ["val"] * 8
    stage = build_stage(_config(True), manifest, tmp_path / "cache")
    assert stage.model._compiled_call_impl is not None
    assert all(not k.startswith("_orig_mod") for k in stage.model.state_dict())
