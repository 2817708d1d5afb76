"""Request and response models of the server's protocols (TF-Serving REST, KServe v2, uploads)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: what went wrong, in words (TF-Serving's `error` key)."""

    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "bad input: not an image, truncated, wrong shape or dtype, malformed JSON",
        401: "missing or wrong API key",
        404: "unknown model name or version",
        408: "request body not complete within body_timeout_s",
        413: "body over max_upload_bytes or more instances than max_instances",
        422: "invalid query parameters of /explain",
        503: "server busy (too many decodes or explanations at once); retry after Retry-After seconds",
    }.items()
}


class ModelCard(BaseModel):
    """What the bundle says about the model: intended use, training data and its own metrics."""

    run: str | None = None
    created: str | None = None
    intended_use: str
    training_data: str
    metrics: dict[str, float] = Field(default_factory=dict)
    conformal_coverage: float | None = Field(
        None, description="target coverage of the bundle's prediction sets; None: it has none"
    )


class Health(BaseModel):
    """GET /healthz."""

    status: Literal["ok"] = "ok"
    model: str
    classes: list[str]
    backend: str
    auth_required: bool
    intended_use: str
    model_card: ModelCard


class OodVerdict(BaseModel):
    """The out-of-distribution detector's score, threshold and flag (all null for a bundle without one)."""

    score: float | None = None
    threshold: float | None = None
    flagged: bool | None = None
    note: str | None = Field(None, description="why score and flag are missing, when they are")


class GateVerdict(BaseModel):
    """The input gate: the checks the image failed, and those that did not run."""

    reasons: list[str] = Field(
        default_factory=list, description="not_greyscale, too_small, likely_inverted, not_frontal_chest"
    )
    unavailable: list[str] = Field(default_factory=list)


class Verdict(BaseModel):
    """Whether to trust a result: the conformal set, the OOD flag, the gate, and abstain."""

    prediction_set: list[str] | None = Field(
        None, description="classes of the conformal set at the bundle's coverage (null without one)"
    )
    ood: OodVerdict = Field(default_factory=OodVerdict)
    gate: GateVerdict = Field(default_factory=GateVerdict)
    abstain: bool | None = Field(
        None, description="true: outside what this model was trained on; do not interpret the probabilities"
    )
    abstain_reasons: list[str] = Field(
        default_factory=list, description="gate codes, 'ood', 'empty_set' or 'ambiguous_set'"
    )


class ClassResult(Verdict):
    """Probabilities of one image, by class name, the most probable class, and whether to trust them."""

    model: str
    probabilities: dict[str, float]
    predicted: str


class ExplainResult(ClassResult):
    """ClassResult plus the class-activation map drawn over the image (PNG, base64)."""

    target_class: str
    method: str
    overlay_png: str = Field(description="heat map over the image, PNG, base64")
    image_png: str = Field(description="the decoded image as the model saw it before resizing, PNG, base64")


class TFPredictRequest(BaseModel):
    """TF-Serving :predict / :explain body: row (`instances`) or columnar (`inputs`) format."""

    model_config = ConfigDict(extra="forbid")
    signature_name: str | None = None
    instances: list[Any] | None = None
    inputs: Any = None


class TFPredictResponse(BaseModel):
    """Row-format answer."""

    predictions: list[list[float]]


class TFColumnarResponse(BaseModel):
    """Columnar-format answer."""

    outputs: list[list[float]]


class TFExplanation(Verdict):
    """One instance's explanation in a TF-Serving-style :explain answer, with its verdict."""

    probabilities: dict[str, float]
    predicted: str
    target_class: str
    method: str
    overlay_png: str


class TFExplainResponse(BaseModel):
    """:explain answer: one entry per instance."""

    explanations: list[TFExplanation]


class V2Tensor(BaseModel):
    """A KServe v2 / Open Inference Protocol tensor; `data` is absent when it travels as binary
    (`parameters.binary_data_size` bytes after the JSON header)."""

    model_config = ConfigDict(extra="ignore")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(BaseModel):
    """An output the client asks for, optionally as binary data (`parameters.binary_data`)."""

    model_config = ConfigDict(extra="ignore")
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """POST /v2/models/{name}[/versions/1]/infer body (or its JSON header, with binary tensors)."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    """POST /v2/models/{name}/infer answer."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]


class V2TensorMeta(BaseModel):
    """Name, datatype and shape (-1 = any) of a model input or output."""

    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    """GET /v2/models/{name}."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMeta]
    outputs: list[V2TensorMeta]
    parameters: dict[str, Any]
