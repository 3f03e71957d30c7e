# facestream image: the package, its CPU runtime and the default model version built at
# image build time from PyPI-shipped weights (nothing is downloaded when a pod starts).
# GPU replicas: build with BASE=nvcr.io/nvidia/tensorrt:<tag>-py3 and `pip install tensorrt`.
ARG BASE=python:3.11-slim
FROM ${BASE}

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/facestream
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY scripts ./scripts
RUN pip install --no-cache-dir . \
    && FACESTREAM_MODELS__STORE=/opt/facestream/models facestream models bootstrap
ENV FACESTREAM_MODELS__STORE=/opt/facestream/models \
    FACESTREAM_GALLERY__DATA_DIR=/var/lib/facestream/gallery \
    RAY_AUTH_MODE=disabled
USER 65532
ENTRYPOINT ["facestream"]
CMD ["--help"]
