# streamworker: one entry point for people and CI. `make demo`, `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

NPM_DIR ?= $(HOME)/.cache/streamworker/npm

.PHONY: install kafka emulators system-tools k8s-tools demo test lint faults bench soak clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

kafka: $(STAMP)
	$(PY) scripts/kafka_broker.py fetch >/dev/null
	$(PY) scripts/kafka_broker.py fetch --version 4.1.1 >/dev/null

# The Kinesis emulator for the Kinesis tests (DynamoDB comes from moto, a dev dependency).
emulators:
	@test -f $(NPM_DIR)/node_modules/kinesis-local/main.js || \
	  npm install --silent --prefix $(NPM_DIR) kinesis-local@0.6.2

# Prometheus/promtool and Chromium from Debian, for the operations tests (root on these machines).
system-tools:
	@command -v promtool >/dev/null && command -v chromium >/dev/null || { \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null; }

# kustomize and kubeconform for the Kubernetes manifests' offline checks (tests/ops/test_kubernetes.py),
# built from their Go modules into .bin/ (a minute or so once, then cached there).
K8S_BIN             := $(CURDIR)/.bin
KUSTOMIZE_VERSION   := v5.7.1
KUBECONFORM_VERSION := v0.7.0
k8s-tools: $(K8S_BIN)/.kustomize-$(KUSTOMIZE_VERSION) $(K8S_BIN)/.kubeconform-$(KUBECONFORM_VERSION)

$(K8S_BIN)/.kustomize-$(KUSTOMIZE_VERSION):
	GOBIN=$(K8S_BIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	touch $@

$(K8S_BIN)/.kubeconform-$(KUBECONFORM_VERSION):
	GOBIN=$(K8S_BIN) go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	touch $@

demo: install kafka
	$(PY) -m load demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install kafka emulators system-tools k8s-tools lint
	$(PY) -m pytest

# Issue 13's fault suite only: a three-node Kafka cluster, brokers and workers killed mid-stream.
faults: install kafka
	$(PY) -m pytest tests/faults -v -rPx --show-capture=stdout

bench: install kafka emulators
	$(PY) -m pip install -q -e '.[bench]'
	@test -f $(NPM_DIR)/node_modules/kinesalite/cli.js || \
	  npm install --silent --prefix $(NPM_DIR) kinesalite@3.3.3
	$(PY) -m load bench

# Issue 13's soak: 2,000 readings/s, three workers, kill -9 / SIGTERM / broker SIGKILL on a
# schedule; figures and a chart in load/results/soak-*.{json,png}. `make soak MINUTES=3`.
MINUTES ?= 30
soak: install kafka
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m load soak --minutes $(MINUTES)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
