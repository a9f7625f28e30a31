# The two set-up commands: `make run` and `make test` (each installs what it needs first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: install browser run test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Headless Chromium and its driver for the console's browser tests (Debian's packages);
# without them those tests skip, saying why.
APT_CHROMIUM := apt-get update -q && apt-get install -y -q chromium chromium-driver
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		sh -c '$(APT_CHROMIUM)' || sudo -n sh -c '$(APT_CHROMIUM)' || \
		echo "warning: could not install chromium + chromium-driver; browser tests will skip"

# CONFIG=path/langgraph.json: serve that LangGraph project too (docs/own-agents.md)
run: install
	$(PY) -m serve_app $(if $(CONFIG),--config $(CONFIG))

test: install browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
