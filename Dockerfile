# facestream image: the package, its CPU runtime and the default model version built at
# image build time from PyPI-shipped weights (nothing is downloaded when a pod starts).
# GPU replicas: build with BASE=nvcr.io/nvidia/tensorrt:<tag>-py3 and `pip install tensorrt`.
#
# Two kinds of base work: the public python image (Python 3.11 in /usr/local), and a plain
# Debian bookworm image without Python, such as the one scripts/k8s/images.sh makes with
# debootstrap where no image registry can be reached (BASE=localhost/facestream/debian:
# bookworm). On the latter, Debian's python3 (3.11), pip and `python` are installed first,
# and pip is told to install beside Debian's Python anyway (PIP_BREAK_SYSTEM_PACKAGES: its
# PEP 668 guard; nothing else in the image uses Debian's Python). Either way the package
# and its commands (facestream, ray) land under /usr/local, which stays on PATH even in
# the login shells (`bash -l`) that KubeRay starts Ray in.
ARG BASE=python:3.11-slim
FROM ${BASE}

# wget: KubeRay (1.5) liveness/readiness probes run `wget ... | grep success` in Ray pods.
# The user 65532 gets a passwd entry and a home: Ray and other libraries look up the user
# name and write caches under $HOME, which fail for a uid without one.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 wget \
        $(command -v python3 >/dev/null || echo python3 python3-pip python-is-python3) \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 facestream \
    && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/facestream facestream
WORKDIR /opt/facestream
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY scripts ./scripts
# The builder's pip settings, for this build only (unset ones stay unset): a CA bundle
# where outbound TLS is intercepted (a file the builder mounts), or a package index.
ARG PIP_CERT
ARG PIP_INDEX_URL
RUN PIP_BREAK_SYSTEM_PACKAGES=1 pip install --no-cache-dir . \
    && FACESTREAM_MODELS__STORE=/opt/facestream/models facestream models bootstrap \
    && chmod -R a+rX,go-w /opt/facestream/models
# /opt/facestream/models stays root-owned and read-only, but readable by every user:
# `models bootstrap` makes what it writes owner-only (0700/0600, root's here), and the
# chart's seed-models init container, uid 65532, failed with "cp: cannot stat
# '/opt/facestream/models/.': Permission denied". It is the baked default version
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
