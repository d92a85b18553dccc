# One image for every process (release, web, worker, beat). Build the GPU flavour with
#   docker build --build-arg ORT=onnxruntime-gpu -t inferq:gpu .
#
# Two stages: the builder installs the [models] extra (torch, CPU wheel) and builds the demo
# models; the runtime stage installs only the base package (ONNX Runtime, no torch) and copies
# the built models in, so the image that runs is a fraction of the size and `release` has no
# models to build.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
# torch (CPU wheel) is only needed to export the demo models.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[models]" \
 && inferq models build --models-dir /models

FROM python:3.11-slim AS runtime
ARG ORT=onnxruntime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INFERQ_VAR_DIR=/data INFERQ_MODELS_DIR=/srv/inferq/models
WORKDIR /srv/inferq
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
RUN pip install . \
 && if [ "$ORT" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install "$ORT"; fi \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home inferq \
 && mkdir -p /data && chown inferq:inferq /data
COPY --from=builder /models ./models
USER inferq
EXPOSE 8000 9100
# Checks whatever the container runs (api: /readyz, worker: a Celery ping, beat: its schedule
# file), see app/cli/health.py.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["inferq", "healthcheck"]
CMD ["inferq", "api", "--host", "0.0.0.0", "--port", "8000"]
