# The two commands of the README: `make demo` and `make test`. Both set themselves up.
VENV ?= $(HOME)/.cache/facestream/venv
export FACESTREAM_VENV := $(VENV)
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)

.PHONY: setup demo test lint kafka-fetch eval-lfw bench

setup:
	@bash scripts/setup.sh

kafka-fetch:
	@bash scripts/kafka.sh fetch

demo: setup
	$(BIN)/facestream demo

lint: setup
	$(BIN)/ruff check pipeline tests

test: setup kafka-fetch lint
	$(BIN)/python -m pytest -q -rs

eval-lfw: setup
	$(BIN)/facestream eval pairs --root $(SHARED)/data/lfw-dev --pairs $(SHARED)/data/lfw-dev/pairs.tsv --out reports/lfw-dev

bench: setup
	$(BIN)/facestream bench embed
