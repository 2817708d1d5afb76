"""False-COVID share over all non-COVID images, source predictability, and the source_class sampler."""

from __future__ import annotations

import numpy as np
import torch

from covid_cxr.data.datamodule import CxrDataModule
from covid_cxr.evaluation.generalisation import false_covid, penultimate, source_predictability


def test_false_covid_counts_images_of_classes_the_model_lacks() -> None:
    labels = np.array(["COVID", "COVID", "Normal", "Normal", "bacterial", "bacterial", "bacterial"])
    y = np.array([0, 0, 1, 1, -1, -1, -1])
    predicted = np.array([0, 1, 0, 1, 0, 0, 1])
    result = false_covid(labels, y, predicted, covid=0)
    assert (result["n_non_covid"], result["called_covid"]) == (5, 3)
    assert result["share"] == 0.6 and result["n_outside_model_classes"] == 3
    assert result["per_label"]["bacterial"] == {
        "n": 3,
        "called_covid": 2,
        "share": 2 / 3,
        "model_class": False,
    }
    assert result["covid_recall"] == 0.5
    assert result["interval"]["lower"] < 0.6 < result["interval"]["upper"]
    assert false_covid(labels, y, predicted, covid=None) is None


def test_source_predictability_finds_an_encoded_source_and_not_a_random_one() -> None:
    rng = np.random.default_rng(0)
    n = 80
    sources = np.array(["a", "b"] * (n // 2))
    labels = np.array(["Normal"] * (n // 2) + ["COVID"] * (n // 2))
    groups = np.array([f"p{i}" for i in range(n)], dtype=object)
    noise = rng.normal(size=(n, 8))
    encoded = noise + 3.0 * (sources == "b")[:, None]
    high = source_predictability(encoded, sources, labels, groups)
    low = source_predictability(noise, sources, labels, groups)
    assert high["flag"] and all(v["auc"] > 0.95 for v in high["per_class"].values())
    assert high["verdict"].startswith("FLAG")
    assert not low["flag"] and all(v["auc"] < 0.8 for v in low["per_class"].values())
    one = source_predictability(noise, np.array(["a"] * n), labels, groups)
    assert one["verdict"].startswith("SKIP: one source") and one["per_class"] == {}


def test_penultimate_collects_the_input_of_the_last_linear_layer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4)
    with penultimate(model) as captured:
        model(x)
    np.testing.assert_allclose(captured[0], torch.relu(model[0](x)).detach().numpy(), rtol=1e-6)
    model(x)
    assert len(captured) == 1  # the hook is gone after the block


def test_source_class_sampler_draws_every_source_class_cell_equally() -> None:
    labels = np.array([0] * 60 + [1] * 20 + [0] * 10 + [1] * 10)
    cells = np.array([0] * 60 + [1] * 20 + [2] * 10 + [3] * 10)  # (source, class)
    inputs = torch.arange(len(labels), dtype=torch.float32)[:, None]
    splits = {"train": np.arange(len(labels)), "val": np.arange(4)}
    dm = CxrDataModule(inputs, labels, splits, batch_size=100, balance_sampler=True, strata=cells)
    drawn = np.concatenate([list(iter(dm._sampler(torch.Generator().manual_seed(s)))) for s in range(50)])
    share = np.bincount(cells[drawn], minlength=4) / len(drawn)
    np.testing.assert_allclose(share, 0.25, atol=0.02)
    by_class = CxrDataModule(inputs, labels, splits, batch_size=100, balance_sampler=True)
    drawn = np.concatenate(
        [list(iter(by_class._sampler(torch.Generator().manual_seed(s)))) for s in range(50)]
    )
    assert abs(np.bincount(cells[drawn], minlength=4)[0] / len(drawn) - 60 / 70 / 2) < 0.03
