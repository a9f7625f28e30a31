# The two set-up commands: `make run` and `make test` (each installs what it needs first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: install browser screenshots run test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Headless Chromium and its driver for the console's browser tests (Debian's packages).
# When they cannot be installed this target fails, and so do those tests: CI must run them.
# On a dev box without them, AGENT_CLUSTER_SKIP_BROWSER=1 skips both the install and the tests.
APT_CHROMIUM := apt-get update -q && apt-get install -y -q chromium chromium-driver
HAS_CHROMIUM := command -v chromium >/dev/null && command -v chromedriver >/dev/null
browser:
	@if [ "$$AGENT_CLUSTER_SKIP_BROWSER" = 1 ]; then \
		echo "AGENT_CLUSTER_SKIP_BROWSER=1: the browser tests will skip"; \
	elif ! { $(HAS_CHROMIUM); }; then \
		{ sh -c '$(APT_CHROMIUM)' || sudo -n sh -c '$(APT_CHROMIUM)'; } && $(HAS_CHROMIUM) || { \
		echo "error: could not install chromium + chromium-driver" \
			"(AGENT_CLUSTER_SKIP_BROWSER=1 skips the browser tests)" >&2; exit 1; }; fi

# The console's screenshots in docs/screenshots/ (docs/console.md shows them) are refreshed only
# here: the browser tests write them to a temporary folder otherwise.
screenshots: install browser
	AGENT_CLUSTER_SCREENSHOTS=$(CURDIR)/docs/screenshots \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_console.py

# CONFIG=path/langgraph.json: serve that LangGraph project too (docs/own-agents.md)
run: install
	$(PY) -m serve_app $(if $(CONFIG),--config $(CONFIG))

# The slowest tests are listed at the end: the suite is kept under 12 minutes on 2 cores.
test: install browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider --durations=30

lint: install
	$(VENV)/bin/ruff check .
