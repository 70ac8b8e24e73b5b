# tlsstorm: `make demo` runs the main job, `make test` runs every check. Both set up what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install system-deps lint test demo up clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install tlsstorm (editable) with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

APT_TOOLS := openssl chromium

system-deps: ## install the OS tools the tests speak to (openssl, chromium), when missing and root
	@missing=""; for tool in $(APT_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      -o DPkg::Lock::Timeout=600 $$missing; \
	  else echo "install$$missing (Debian packages) to run every test"; fi; fi

lint: install ## ruff over the code, tests and benchmarks
	$(BIN)/ruff check services tests bench

test: install system-deps lint ## lint, then every test (real SMTP, STARTTLS, OTLP on loopback)
	$(BIN)/python -m pytest

demo: install ## start the local stack, send a mixed wave, print what TLS cost the receiver
	$(BIN)/tlsstorm demo

up: install ## run the local stack until Ctrl-C
	$(BIN)/tlsstorm up

clean: ## remove the virtualenv and results
	rm -rf $(VENV) results .pytest_cache .ruff_cache
