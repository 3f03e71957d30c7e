# facestream image: the package, its CPU runtime and the default model version built at
# image build time from PyPI-shipped weights (nothing is downloaded when a pod starts).
# GPU replicas: build with BASE=nvcr.io/nvidia/tensorrt:<tag>-py3 and `pip install tensorrt`.
ARG BASE=python:3.11-slim
FROM ${BASE}

# wget: KubeRay (1.5) liveness/readiness probes run `wget ... | grep success` in Ray pods.
# The user 65532 gets a passwd entry and a home: Ray and other libraries look up the user
# name and write caches under $HOME, which fail for a uid without one.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 facestream \
    && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/facestream facestream
WORKDIR /opt/facestream
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY scripts ./scripts
RUN pip install --no-cache-dir . \
    && FACESTREAM_MODELS__STORE=/opt/facestream/models facestream models bootstrap
# /opt/facestream/models stays root-owned and read-only: it is the baked default version
# that the Helm chart's init container copies into the shared, writable model store
# (FACESTREAM_MODELS__STORE there) when that is empty. The data folders below are for
# plain `docker run`; on Kubernetes they are volumes.
ENV FACESTREAM_MODELS__STORE=/opt/facestream/models \
    FACESTREAM_GALLERY__DATA_DIR=/var/lib/facestream/gallery \
    HOME=/home/facestream
RUN mkdir -p /var/lib/facestream/gallery /var/lib/facestream/models \
    && chown -R 65532:65532 /var/lib/facestream
USER 65532:65532
ENTRYPOINT ["facestream"]
CMD ["--help"]
