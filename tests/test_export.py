"""export_run: model.onnx made or checked against PyTorch, and a Triton model repository that parses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from covid_cxr.bundle import load_bundle, write_bundle
from covid_cxr.config import HeadConfig, ModelConfig, RunConfig
from covid_cxr.data.manifest import sha256_file
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import BundleError
from covid_cxr.export import export_run
from covid_cxr.models.zoo import build_model

CLASSES = ["covid", "normal", "viral"]
SPEC = Preprocess(size=32, channels=1, normalize="dataset", mean=(0.5,), std=(0.25,))
HEAD = HeadConfig(pooling="gap", hidden=[8])
# Triton's DataType enum, in the order of model_config.proto (TYPE_INVALID = 0 ... TYPE_BF16 = 14).
DATA_TYPES = [
    "INVALID",
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "STRING",
    "BF16",
]


def write_tiny(out: Path, seed: int = 0, export_onnx: bool = True, temperature: float = 1.5) -> Path:
    """A random convnet bundle at 32 px, one channel, with a temperature."""
    torch.manual_seed(seed)
    model = build_model("convnet", HEAD, len(CLASSES), image_size=SPEC.size, in_chans=SPEC.channels).eval()
    config = RunConfig(name="tiny export", preprocess=SPEC, model=ModelConfig(arch="convnet", head=HEAD))
    return write_bundle(
        out, model, config, CLASSES, SPEC, {}, "fp", temperature=temperature, export_onnx=export_onnx
    )


def triton_model_config() -> type:
    """The part of Triton's ModelConfig message (model_config.proto) that our config.pbtxt uses."""
    f = descriptor_pb2.FileDescriptorProto(name="triton_subset.proto", package="inference", syntax="proto3")
    enum = f.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPES):
        enum.value.add(name=f"TYPE_{name}", number=number)
    T = descriptor_pb2.FieldDescriptorProto
    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED

    def message(name: str, fields: list[tuple[str, int, int, str | None]]) -> descriptor_pb2.DescriptorProto:
        msg = f.message_type.add(name=name)
        for number, (field, kind, label, type_name) in enumerate(fields, start=1):
            extra = {"type_name": type_name} if type_name else {}
            msg.field.add(name=field, number=number, type=kind, label=label, **extra)
        return msg

    message(
        "ModelInput",
        [
            ("name", T.TYPE_STRING, opt, None),
            ("data_type", T.TYPE_ENUM, opt, ".inference.DataType"),
            ("dims", T.TYPE_INT64, rep, None),
        ],
    )
    message(
        "ModelOutput",
        [
            ("name", T.TYPE_STRING, opt, None),
            ("data_type", T.TYPE_ENUM, opt, ".inference.DataType"),
            ("dims", T.TYPE_INT64, rep, None),
            ("label_filename", T.TYPE_STRING, opt, None),
        ],
    )
    message(
        "ModelDynamicBatching",
        [
            ("preferred_batch_size", T.TYPE_INT32, rep, None),
            ("max_queue_delay_microseconds", T.TYPE_UINT64, opt, None),
        ],
    )
    message("ModelParameter", [("string_value", T.TYPE_STRING, opt, None)])
    config = message(
        "ModelConfig",
        [
            ("name", T.TYPE_STRING, opt, None),
            ("platform", T.TYPE_STRING, opt, None),
            ("max_batch_size", T.TYPE_INT32, opt, None),
            ("input", T.TYPE_MESSAGE, rep, ".inference.ModelInput"),
            ("output", T.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
            ("dynamic_batching", T.TYPE_MESSAGE, opt, ".inference.ModelDynamicBatching"),
            ("parameters", T.TYPE_MESSAGE, rep, ".inference.ModelConfig.ParametersEntry"),
        ],
    )
    entry = config.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=T.TYPE_MESSAGE, label=opt, type_name=".inference.ModelParameter"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose bundle was written without model.onnx."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    write_tiny(run / "bundle", export_onnx=False)
    return run


def test_missing_onnx_is_exported_recorded_and_matches_torch(run_dir: Path) -> None:
    bundle = run_dir / "bundle"
    result = export_run(run_dir)
    assert result["exported"] is True and result["onnx"] == str(bundle / "model.onnx")
    assert 0 <= result["max_abs_diff"] <= 1e-4
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["files"]["model.onnx"] == sha256_file(bundle / "model.onnx")
    assert info["onnx"]["input"] == "input" and info["onnx"]["opset"] >= 17
    x = np.random.default_rng(0).normal(size=(7, 1, 32, 32)).astype(np.float32)
    onnx_probs = load_bundle(bundle, backend="onnx").predict_tensor(x)
    np.testing.assert_allclose(onnx_probs, load_bundle(bundle, backend="torch").predict_tensor(x), atol=1e-4)
    again = export_run(bundle)  # a bundle folder works too; nothing left to export
    assert again["exported"] is False and again["max_abs_diff"] == pytest.approx(result["max_abs_diff"])


def test_triton_repository_is_valid_and_runs_any_batch_size(run_dir: Path, tmp_path: Path) -> None:
    result = export_run(run_dir, triton_dir=tmp_path / "models")
    model_dir = tmp_path / "models" / "tiny_export"
    assert result["triton_model"] == str(model_dir) and result["config"] == str(model_dir / "config.pbtxt")
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), triton_model_config()())
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    assert config.name == "tiny_export" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds > 0
    [inp], [out, features] = config.input, config.output
    assert (inp.name, out.name) == (graph.input[0].name, graph.output[0].name) == ("input", "probabilities")
    assert features.name == graph.output[1].name == "features"  # what the OOD detector reads
    assert DATA_TYPES[inp.data_type] == DATA_TYPES[out.data_type] == DATA_TYPES[features.data_type] == "FP32"
    assert list(inp.dims) == [1, 32, 32] and list(out.dims) == [3] and len(features.dims) == 1
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch dimension is dynamic
    assert (model_dir / out.label_filename).read_text().splitlines() == CLASSES
    assert json.loads(config.parameters["class_names"].string_value) == CLASSES
    assert Preprocess.model_validate_json(config.parameters["preprocess"].string_value) == SPEC
    assert sha256_file(model_dir / "1" / "model.onnx") == sha256_file(run_dir / "bundle" / "model.onnx")
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 16):
        probs = session.run(None, {"input": np.zeros((n, 1, 32, 32), dtype=np.float32)})[0]
        assert probs.shape == (n, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_triton_name_and_batch_size_options(run_dir: Path, tmp_path: Path) -> None:
    export_run(run_dir, triton_dir=tmp_path, name="cxr-v2", max_batch_size=4)
    config = text_format.Parse((tmp_path / "cxr-v2" / "config.pbtxt").read_text(), triton_model_config()())
    assert config.name == "cxr-v2" and config.max_batch_size == 4
    with pytest.raises(BundleError, match="model name"):
        export_run(run_dir, triton_dir=tmp_path, name="../escape")


def test_onnx_that_disagrees_with_torch_is_refused(tmp_path: Path) -> None:
    bundle = write_tiny(tmp_path / "a" / "bundle", seed=0)
    other = write_tiny(tmp_path / "b" / "bundle", seed=1)
    (bundle / "model.onnx").write_bytes((other / "model.onnx").read_bytes())
    info = json.loads((bundle / "bundle.json").read_text())
    info["files"]["model.onnx"] = sha256_file(bundle / "model.onnx")  # a consistent but wrong bundle
    (bundle / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="disagrees with PyTorch"):
        export_run(bundle)


def test_not_a_run_or_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle.json"):
        export_run(tmp_path)
