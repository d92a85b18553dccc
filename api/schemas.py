"""Request and response bodies of ``/v1`` (pydantic v2)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class PredictionCreate(BaseModel):
    """Body of ``POST /v1/predictions``: ``input`` for one, ``inputs`` for several."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"model": "minilm-embed", "input": {"text": "my invoice is wrong"}},
                {"model": "churn-risk", "inputs": [{"features": [0.5] * 12}], "priority": "low"},
            ]
        },
    )

    model: str = Field(min_length=1, max_length=100)
    model_version: str | None = Field(None, max_length=50)
    input: Any = None
    inputs: list[Any] | None = None
    callback_url: str | None = Field(None, max_length=2000)
    priority: Literal["high", "normal", "low"] = "normal"
    deadline_s: float | None = Field(None, gt=0, le=86_400)
    metadata: dict[str, Any] | None = None
    ttl_s: float | None = Field(None, gt=0)
    """Seconds to keep the predictions after they were created (at most ``max_ttl``)."""

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("callback_url must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _one_of_input_inputs(self) -> PredictionCreate:
        if (self.input is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'input' or 'inputs'")
        return self


class PredictionAccepted(BaseModel):
    id: str
    status: str
    model: str
    created_at: str


class ModelPublic(BaseModel):
    name: str
    version: str
    kind: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    max_batch_size: int
    max_delay_ms: float
    length_buckets: list[int]
    sha256: str
    labels: dict[str, list[str]] = {}
    metrics: dict[str, Any] = {}
    versions: list[str] = []
    created_at: str
