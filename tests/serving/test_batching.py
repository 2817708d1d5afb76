"""Micro-batching: concurrent requests share model calls and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from covid_cxr.bundle import load_bundle
from covid_cxr.predictor import Predictor
from covid_cxr.serving.batching import DirectRunner, MicroBatcher, make_runner
from tests.serving.conftest import MODEL_NAME, SPEC, make_client


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return load_bundle(bundle_dir)


def batches(count: int, rows: int = 1, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(rows, 3, SPEC.size, SPEC.size)).astype(np.float32) for _ in range(count)]


async def run_all(runner: DirectRunner, xs: list[np.ndarray]) -> list[np.ndarray]:
    async with runner:
        return list(await asyncio.gather(*(runner.run(x) for x in xs)))


def test_concurrent_requests_are_gathered_into_few_calls(predictor: Predictor) -> None:
    calls: list[int] = []

    def counted(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return predictor.predict_tensor(x)

    xs = batches(8) + batches(2, rows=3, seed=1)
    results = asyncio.run(run_all(MicroBatcher(counted, max_batch=16, max_wait_s=0.2), xs))
    assert sum(calls) == 14 and len(calls) < len(xs)
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, predictor.predict_tensor(x), atol=1e-6)


def test_batches_stay_near_max_batch(predictor: Predictor) -> None:
    calls: list[int] = []

    def counted(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return predictor.predict_tensor(x)

    asyncio.run(run_all(MicroBatcher(counted, max_batch=4, max_wait_s=0.2), batches(10)))
    assert sum(calls) == 10 and max(calls) <= 4 and len(calls) >= 3


def test_large_request_runs_on_its_own(predictor: Predictor) -> None:
    calls: list[int] = []

    def counted(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return predictor.predict_tensor(x)

    [x] = batches(1, rows=5)
    [got] = asyncio.run(run_all(MicroBatcher(counted, max_batch=4, max_wait_s=0.2), [x]))
    assert calls == [5]
    np.testing.assert_allclose(got, predictor.predict_tensor(x), atol=1e-6)


def test_a_failing_call_fails_every_request_in_it_and_the_batcher_goes_on() -> None:
    def fails_on_nan(x: np.ndarray) -> np.ndarray:
        if np.isnan(x).any():
            raise ValueError("nan in batch")
        return x.reshape(len(x), -1)[:, :2]

    async def scenario() -> tuple[list[object], np.ndarray]:
        batcher = MicroBatcher(fails_on_nan, max_batch=8, max_wait_s=0.1)
        async with batcher:
            bad = [np.full((1, 1, 2, 2), np.nan, dtype=np.float32), np.ones((1, 1, 2, 2), dtype=np.float32)]
            outcomes = await asyncio.gather(*(batcher.run(x) for x in bad), return_exceptions=True)
            after = await batcher.run(np.ones((1, 1, 2, 2), dtype=np.float32))
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert all(isinstance(o, ValueError) for o in outcomes)
    np.testing.assert_array_equal(after, [[1.0, 1.0]])


def test_make_runner_and_direct_runner(predictor: Predictor) -> None:
    assert isinstance(make_runner(predictor.predict_tensor, batching=True), MicroBatcher)
    direct = make_runner(predictor.predict_tensor, batching=False)
    assert type(direct) is DirectRunner
    xs = batches(3, seed=2)
    for x, got in zip(xs, asyncio.run(run_all(direct, xs)), strict=True):
        np.testing.assert_allclose(got, predictor.predict_tensor(x), atol=1e-6)
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(predictor.predict_tensor, max_batch=0)


def test_server_with_batching_answers_concurrent_clients(bundle_dir: Path, predictor: Predictor) -> None:
    xs = [x.transpose(0, 2, 3, 1) for x in batches(8, seed=3)]  # NHWC, as TF-Serving clients send
    with make_client(bundle_dir, batching=True, max_wait_ms=50) as client, ThreadPoolExecutor(8) as pool:
        assert isinstance(client.app.state.served.runner, MicroBatcher)
        url = f"/v1/models/{MODEL_NAME}:predict"
        responses = list(pool.map(lambda x: client.post(url, json={"instances": x.tolist()}), xs))
    for x, response in zip(xs, responses, strict=True):
        got = response.json()["predictions"]
        np.testing.assert_allclose(got, predictor.predict_tensor(x.transpose(0, 3, 1, 2)), atol=1e-6)
