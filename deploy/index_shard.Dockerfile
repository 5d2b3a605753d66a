# syntax=docker/dockerfile:1
# Index shard service, one container per shard (SHARD_NAME), reading the shared index volume.
# Build from the repository root: docker build -f deploy/index_shard.Dockerfile .

# hnswlib publishes only source, so every wheel is built in this stage, which
# has a compiler; the final image stays slim and installs the wheels offline.
FROM python:3.11-slim AS wheels
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
COPY requirements/serve.txt /tmp/serve.txt
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r /tmp/serve.txt

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/serve.txt /tmp/serve.txt
# A bind mount, not a COPY, so the wheels do not stay in a layer of the image.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels -r /tmp/serve.txt
WORKDIR /app
COPY shared/ shared/
COPY services/__init__.py services/__init__.py
COPY services/index_shard/ services/index_shard/
# Model paths default to the repository layout under /app (Compose mounts
# models/ there). The index volume goes on /data/index, not on var/index: the
# indexing job publishes by renaming a folder, which cannot be done to a mount
# point. A new named volume takes the owner of the folder it is mounted on.
RUN useradd --system --uid 10001 --home-dir /app app \
 && mkdir -p var /data/index \
 && chown app:app var /data/index
USER app
# One image for every process of this kind; PORT picks the port, Compose sets it.
ENV PORT=8200
EXPOSE 8200
# 0.0.0.0: inside Compose the other services reach this one by its service name.
CMD ["sh", "-c", "exec uvicorn services.index_shard.app:app --host 0.0.0.0 --port \"$PORT\""]
