# Faultline: the two commands are `make run` and `make test`; everything else is a step of them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_STAMP := services/common/pb/.generated
PROTOS := $(shell find protos -name '*.proto')
KAFKA := $(PY) deploy/kafka/broker.py
BENCH ?=
LOAD ?=

.PHONY: help setup protos kafka-up kafka-down topics run test test-unit test-integration lint format bench loadtest chaos clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: Faultline needs Python 3.11"; exit 1; }
	@command -v java >/dev/null && command -v mvn >/dev/null || { echo "java 17+ and mvn are needed for the local Kafka broker"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# left behind by an install with transformers 5.25+: it shadows (or is shadowed by) kernels/
	@$(PY) -m pip uninstall -y -q kernels 2>/dev/null || true
	touch $@

$(PROTO_STAMP): $(STAMP) $(PROTOS) services/common/codegen.py
	$(PY) -m services.common.codegen
	touch $@

setup: $(STAMP) $(PROTO_STAMP)  ## create .venv, install everything, generate protobuf code
	@$(KAFKA) fetch >/dev/null
	@# The console's browser test drives Debian's Chromium; installed where apt can (root), skipped otherwise.
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "no Chromium: the console's browser test will be skipped"

protos: $(PROTO_STAMP)  ## regenerate Python code from protos/

kafka-up: setup  ## start the local Kafka broker (KRaft, 127.0.0.1:9092)
	@$(KAFKA) status >/dev/null 2>&1 || $(KAFKA) start

kafka-down:  ## stop the local Kafka broker
	@$(KAFKA) stop

topics: kafka-up  ## create the platform's topics and their DLQs
	@$(VENV)/bin/faultline topics

run: topics  ## set up, start Kafka and the services, play a fault scenario, show the result
	@$(VENV)/bin/faultline demo

test: setup  ## unit and integration tests (starts a private Kafka broker)
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

lint: setup  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup  ## benchmarks with same-run baselines (BENCH=name to pick one)
	$(VENV)/bin/faultline bench $(BENCH)

loadtest: setup  ## stepped load until the system falls behind: throughput, percentiles, knee (LOAD=name)
	$(VENV)/bin/faultline loadtest $(LOAD)

chaos: setup  ## kill each service once (SIGKILL) mid-scenario: nothing lost, no incident twice (counts in, effects out)
	$(PY) -m loadtests.reliability

# ---- Helm chart, images, Kubernetes test cluster (helm/faultline, deploy/images, deploy/k8s) ----
IMAGE_REGISTRY ?= ghcr.io/faultline
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' helm/faultline/Chart.yaml)

images:  ## build the cpu and cuda images (needs a Docker engine)
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine is reachable (docker info failed); the images cannot be built on this machine"; exit 1; }
	DOCKER_BUILDKIT=1 docker build -f deploy/images/Dockerfile --target cpu -t $(IMAGE_REGISTRY)/faultline:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 docker build -f deploy/images/Dockerfile --target cuda -t $(IMAGE_REGISTRY)/faultline-cuda:$(IMAGE_TAG) .

k8s-binaries:  ## build helm, etcd, kube-apiserver/-scheduler/-controller-manager, kwok from the Go proxy (cached)
	deploy/k8s/build_binaries.sh

test-helm: setup k8s-binaries  ## chart lint/template/schema/unit tests and an install on a real API server
	FAULTLINE_HELM_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider tests/helm

clean:  ## remove the venv, generated code and local run state
	-$(KAFKA) stop 2>/dev/null
	rm -rf $(VENV) services/common/pb .run bench-results
