# The two commands of the README: `make run` and `make test`. Both set themselves up.
VENV ?= $(HOME)/.cache/facestream/venv
export FACESTREAM_VENV := $(VENV)
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)

TOOLS := $(HOME)/.cache/facestream/bin
HELM_VERSION ?= v3.22.0

.PHONY: setup run demo test test-fast lint kafka-fetch tools postgres mqtt browser k8s eval-lfw bench bench-stream

setup:
	@bash scripts/setup.sh

kafka-fetch:
	@bash scripts/kafka.sh fetch

# helm renders and lints the chart in the tests; built once with Go from the module proxy.
# The KubeRay CRDs (the RayService/RayJob schemas the chart is validated against) come
# from the same proxy, as files of the ray-operator Go module.
tools:
	@if [ ! -x $(TOOLS)/helm ] && ! command -v helm >/dev/null; then \
	  if command -v go >/dev/null; then \
	    echo "[tools] building helm $(HELM_VERSION) (once, a few minutes)"; \
	    GOBIN=$(TOOLS) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	  else echo "[tools] no go: the chart tests will be skipped"; fi; \
	fi
	@if command -v go >/dev/null; then \
	  bash scripts/kuberay-crds.sh >/dev/null || echo "[tools] KubeRay CRDs not fetched: their schema tests will be skipped"; \
	else echo "[tools] no go: the KubeRay schema tests will be skipped"; fi

k8s: tools
	HELM=$(TOOLS)/helm bash scripts/render-k8s.sh

# The main job: local Kafka, Ray, the Serve embedder and search, workers and ingest on the
# shared clip (or an offline clip when ../shared is absent).
run: setup kafka-fetch
	$(BIN)/facestream run

# The face core alone on a video, no Kafka or Ray.
demo: setup
	$(BIN)/facestream demo

lint: setup
	$(BIN)/ruff check pipeline tests
	$(BIN)/mypy

# The tests' PostgreSQL: Debian's package (installed with apt when absent, as root).
postgres:
	@bash scripts/postgres.sh install

# The event bridge's tests' MQTT broker: Debian's mosquitto (apt, as root, when absent).
mqtt:
	@bash scripts/mosquitto.sh install

# The web UI's browser tests: Debian's chromium and chromium-driver (apt, as root, when absent).
browser:
	@bash scripts/chromium.sh install || echo "[browser] no Chromium: the browser tests will be skipped"

# Everything; the twenty slowest tests are listed at the end. Two pytest-xdist workers,
# one test file each at a time (module fixtures stay whole): much of a stream test is
# waiting on Ray, Kafka and Milvus, and a second file fills those waits. (Longest files
# first measured no faster beside a CPU hog, 23.0 against 22.2 min: two heavy files then
# overlap more.) Each worker starts its own session services (Kafka,
# Milvus, Ray, PostgreSQL); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup kafka-fetch tools postgres mqtt browser lint
	$(BIN)/python -m pytest -q -rs --durations=20 -n $(TEST_WORKERS) --dist loadfile

# The edit-test loop: the unit tests and the quick integration tests (tests/conftest.py
# marks the rest slow), a few minutes. `make test` stays the full run.
test-fast: setup kafka-fetch tools postgres mqtt
	$(BIN)/python -m pytest -q -rs -m "not slow" --durations=10 -n $(TEST_WORKERS) --dist loadfile

eval-lfw: setup
	$(BIN)/facestream eval pairs --root $(SHARED)/data/lfw-dev --pairs $(SHARED)/data/lfw-dev/pairs.tsv --out reports/lfw-dev

bench: setup
	$(BIN)/facestream bench embed

# facestream run flat out vs face_recognition's per-frame loop (the peer is installed
# without its dependencies: dlib-bin already provides dlib).
bench-stream: setup kafka-fetch
	$(BIN)/pip install -q --no-deps face_recognition
	$(BIN)/facestream bench stream

# ---- A single-node Kubernetes test cluster, built from the package registries only ----
# (scripts/k8s.sh; deploy/test-cluster/README.md). Needs root. The first `k8s-build` takes
# tens of minutes on 2 cores (Kubernetes from source, the facestream image); later runs
# reuse ~/.cache/facestream/k8s.
.PHONY: k8s-build images k8s-up k8s-down k8s-status k8s-smoke e2e-k8s

k8s-build:
	bash scripts/k8s.sh build

images:
	bash scripts/k8s/images.sh all

k8s-up:
	bash scripts/k8s.sh up

k8s-down:
	bash scripts/k8s.sh down

k8s-status:
	bash scripts/k8s.sh status

k8s-smoke:
	bash scripts/k8s.sh smoke

# The chart end to end on that cluster (scripts/k8s/e2e.sh): build, up, tests/e2e_k8s, down.
# Not part of `make test`.
e2e-k8s: setup tools
	bash scripts/k8s/e2e.sh
