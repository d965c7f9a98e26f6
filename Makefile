# `make demo` and `make test` each build .venv on first use; the stamp file makes
# a second run skip the install unless pyproject.toml changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-extra test-cluster lint format clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	@# pip byte-compiles on one core, this on all of them (20 s less here). Files
	@# written for newer Pythons (torch's py312 test helpers) fail to compile, as
	@# they do under pip, which skips them too: hence `|| true`.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vggpipe demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Debian's Chromium, for tests/e2e/test_mlflow_ui.py (Playwright drives it; no
# browser download). Without recommends: they bring systemd, avahi, samba and
# printer tools; the fonts are the one recommended package the pages need.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium fonts-liberation

test: lint $(CHROMIUM)
	$(BIN)/python -m pytest --durations=15

# Checks too long for make test's budget (benchmarks/gpu_check.py on the CPU);
# .ci/run runs them after make test.
test-extra: $(STAMP)
	$(BIN)/python -m pytest -m extra

# The README's cluster path on three hosts made of network namespaces
# (tests/cluster): needs root and iproute2's `ip`, installed here when missing.
$(VENV)/.cluster-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev,cluster]'
	@touch $@

test-cluster: $(VENV)/.cluster-installed
	@command -v ip > /dev/null || (apt-get update -qq && apt-get install -y -qq iproute2)
	$(BIN)/python -m pytest -m cluster tests/cluster

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
