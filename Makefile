# The one way to build, lint and test virt-rbd-backup. `make help` lists the targets.
#
# Variables: PYTHON (default python3), CARGO_TARGET_DIR (honoured by cargo and maturin),
# PYTEST_ARGS (extra pytest arguments).

.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
PIP := $(PYTHON) -m pip
PYTEST_ARGS ?=
DIST := dist
PY_PACKAGE := python/virt_rbd_backup
PY_SOURCES := $(PY_PACKAGE) tests/python bench
SHELL_SOURCES := lab/*.sh scripts/*.sh tests/*.sh .ci/run

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install-dev
install-dev: ## Install the Python build and test tools of requirements-dev.txt
	$(PIP) install -r requirements-dev.txt

.PHONY: build
build: ## Build the release wheel into dist/ and install it (pip --force-reinstall)
	rm -f $(DIST)/virt_rbd_backup-*.whl $(PY_PACKAGE)/_native*.so
	$(PYTHON) -m maturin build --release --out $(DIST)
	$(PIP) install --no-deps --force-reinstall $(DIST)/virt_rbd_backup-*.whl

.PHONY: wheel
wheel: ## Build the release wheel into dist/ for a fleet (tag cp311-abi3-linux_x86_64; links the host's librbd1, librados2, libvirt0)
	rm -f $(DIST)/virt_rbd_backup-*.whl
	$(PYTHON) -m maturin build --release --out $(DIST)
	@ls $(DIST)/virt_rbd_backup-*.whl

.PHONY: develop
develop: ## Build the extension in place and install the package editable (in a venv: maturin develop)
	@if [ -n "$${VIRTUAL_ENV:-}$${CONDA_PREFIX:-}" ]; then \
		$(PYTHON) -m maturin develop; \
	else \
		$(PIP) install --no-build-isolation --no-deps --editable .; \
	fi

.PHONY: lint
lint: lint-rust lint-python lint-shell stubtest ## All linters: rustfmt, clippy, ruff, mypy --strict, shellcheck, stubtest

.PHONY: lint-rust
lint-rust: ## cargo fmt --check and clippy -D warnings, with and without the python feature
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings

.PHONY: lint-python
lint-python: ## ruff check and ruff format --check on the package, tests and bench; mypy --strict on the package and bench
	$(PYTHON) -m ruff check $(PY_SOURCES)
	$(PYTHON) -m ruff format --check $(PY_SOURCES)
	$(PYTHON) -m mypy --strict $(PY_PACKAGE)
	$(PYTHON) -m mypy --strict bench/*.py

.PHONY: lint-shell
lint-shell: ## shellcheck on the lab, setup, test and CI scripts
	shellcheck $(SHELL_SOURCES)

.PHONY: stubtest
stubtest: build ## Check _native.pyi against the built module (mypy stubtest)
	$(PYTHON) -m mypy.stubtest virt_rbd_backup._native

.PHONY: format
format: ## Reformat Rust and Python sources
	cargo fmt --all
	$(PYTHON) -m ruff format $(PY_SOURCES)
	$(PYTHON) -m ruff check --fix $(PY_SOURCES)

.PHONY: test-unit
test-unit: build ## Unit tests, no lab needed: cargo test --lib and pytest -m "not lab"
	cargo test --lib
	$(PYTHON) -m pytest tests/python -m "not lab" $(PYTEST_ARGS)

.PHONY: test-lab
test-lab: build ## Tests against the Ceph + libvirt lab (pytest -m lab; bring it up with lab/lab.sh up)
	@bash lab/lab.sh status >/dev/null || { echo "the lab is not up: bash lab/lab.sh up" >&2; exit 1; }
	eval "$$(bash lab/lab.sh env)" && VRB_LAB=1 $(PYTHON) -m pytest tests/python -m lab $(PYTEST_ARGS)

.PHONY: test
test: lint test-unit ## Lint and unit tests (what CI runs without the lab)

.PHONY: clean
clean: ## Remove build outputs
	rm -rf $(DIST) .mypy_cache .ruff_cache .pytest_cache $(PY_PACKAGE)/_native*.so
	cargo clean
