"""``GET /v1/models``."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RuntimeDep, TenantDep
from api.public import ModelList
from api.responses import JSON

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """The models this deployment serves, with their schemas and batching knobs."""
    rt.registry.reload()
    models = []
    for entry in rt.registry.latest():
        m = entry.manifest
        models.append(
            {
                "name": m.name,
                "version": m.version,
                "kind": m.kind,
                "input_schema": m.input_schema,
                "output_schema": m.output_schema,
                "max_batch_size": m.batching.max_batch_size,
                "max_delay_ms": m.batching.max_delay_ms,
                "length_buckets": m.batching.length_buckets,
                "max_batch_tokens": m.batching.max_batch_tokens,
                "sha256": m.sha256,
                "labels": m.labels,
                "metrics": m.metrics,
                "versions": [e.manifest.version for e in rt.registry.versions(m.name)],
                "created_at": m.created_at,
            }
        )
    return JSON({"models": models})
