# One image for every process (release, web, worker, beat). Build the GPU flavour with
#   docker build --build-arg ORT=onnxruntime-gpu -t inferq:gpu .
FROM python:3.11-slim
ARG ORT=onnxruntime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 INFERQ_VAR_DIR=/data INFERQ_MODELS_DIR=/data/models
WORKDIR /srv/inferq
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
# torch (CPU wheel) is only needed to export the demo models; workers need ONNX Runtime alone.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[models]" \
 && if [ "$ORT" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install "$ORT"; fi
EXPOSE 8000
CMD ["inferq", "api", "--host", "0.0.0.0", "--port", "8000"]
