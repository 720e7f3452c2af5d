# streampipe — every target is idempotent and fast when warm.
# The two commands a newcomer needs: `make demo` and `make test`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := .cache/bin
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/$(VENV)/bin:$(PATH)

# redis-*: test servers; the rest builds and runs the container images (make images, tests/cluster).
DEBIAN_PACKAGES := redis-server redis-sentinel redis-tools containerd runc buildah mmdebstrap \
	containernetworking-plugins iptables
PYTEST_ARGS ?=
# make compat: the releases to test, and one below the minimum to record what it does with the CRD.
COMPAT_ARGS ?= v1.31.14 v1.37.2 --probe v1.30.14

.PHONY: help setup debian tools controlplane compat images cluster lint lint-chart test test-fast demo bench chaos crds chart-readme clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when the dependency declaration changes.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[operator,dev]'
	touch $@

debian: ## Debian's Redis servers and container tools (apt-get, only when missing)
	@missing=; \
	for tool in redis-server redis-sentinel redis-cli containerd ctr runc buildah mmdebstrap iptables; do \
	  command -v $$tool >/dev/null || missing="$$missing $$tool"; \
	done; \
	[ -x /usr/lib/cni/bridge ] || missing="$$missing cni-plugins"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "missing:$$missing; installing $(DEBIAN_PACKAGES) with apt-get"; \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
	fi

setup: $(VENV)/.installed debian tools ## venv + packages + Debian servers + tool binaries

tools: $(VENV)/.installed debian ## helm, kubectl, hadolint, valkey-server, redis and the chart linters into .cache/bin
	@$(PY) hack/bootstrap_tools.py
	@$(PY) hack/chart_linters.py

lint: $(VENV)/.installed ## ruff, mypy --strict, the import layers and the size limits on both packages
	$(VENV)/bin/ruff check operator worker tests bench hack
	$(VENV)/bin/ruff format --check operator worker tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) hack/size_limits.py

lint-chart: tools controlplane ## ct lint, kube-score and kubeconform on the chart and examples/ (make test runs them too)
	$(PY) -m pytest tests/k8s/test_chart_linters.py $(PYTEST_ARGS)

images: $(VENV)/.installed ## container images with buildah into .cache/images (no-op when up to date)
	@$(PY) hack/images.py

controlplane: ## build the test Kubernetes (API server + etcd, node components) into .cache/bin (no-op when up to date)
	@tests/controlplane/build.sh

# Not part of `make test` or CI (they run the pinned release only): several minutes per release to build.
compat: setup ## CRD, chart and operator tests on the oldest (1.31) and newest Kubernetes; docs/compatibility.md
	$(PY) hack/compat.py $(COMPAT_ARGS)

cluster: setup controlplane images ## run the one-node test cluster in the foreground (tests/cluster/README.md; root)
	tests/cluster/serve

test: setup controlplane images ## lint, then the whole test suite on real servers and the one-node cluster
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup ## a pipeline on an embedded Valkey, with a live view and a summary
	$(VENV)/bin/streampipe up examples/quickstart/pipeline.yaml --demo --duration 60s

bench: setup ## benchmarks against same-run baselines; writes bench/results and docs/benchmarks.md
	$(PY) bench/run.py

chaos: setup controlplane ## the fault suite at full sizes; renders its figures into docs/reliability.md
	rm -rf .cache/chaos-results/full
	started=$$(date +%s); \
	STREAMPIPE_CHAOS_SIZE=full $(PY) -m pytest -m chaos $(PYTEST_ARGS) && \
	$(PY) -m tests.chaos.report --size full --runtime $$(( $$(date +%s) - started ))

crds: $(VENV)/.installed ## regenerate crds/, the chart's copy and docs/api.md's reference from the API models
	$(VENV)/bin/streampipe crd > crds/streampipeline.yaml
	mkdir -p charts/streampipe/crds
	cp crds/streampipeline.yaml charts/streampipe/crds/streampipeline.yaml
	$(VENV)/bin/streampipe crd --update-docs docs/api.md

chart-readme: $(VENV)/.installed ## regenerate charts/streampipe/README.md from Chart.yaml and the values.yaml comments
	$(VENV)/bin/python hack/chart_readme.py

clean: ## remove the venv and caches (the Go build cache is left alone)
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
