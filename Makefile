# Every target bootstraps .venv on first use with a Python >= 3.12 that
# scripts/find-python finds on its own.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo run test lint bench bench-soak clean

$(STAMP): pyproject.toml
	@interp=$$(scripts/find-python) || exit 1; \
	  if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$interp"; "$$interp" -m venv $(VENV) || exit 1; fi
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/broker-proxy demo
	@echo "broker-proxy is installed in $(VENV)/bin only: 'source $(VENV)/bin/activate' puts it on PATH"

run: $(STAMP)
	$(VENV)/bin/broker-proxy run --certs certs $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/broker-proxy policy test policies/
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

# Scrubbing sizes are modest so `make bench` takes minutes; the 1 GB runs:
#   make bench SCRUB_ARGS="--size-mib 1024" SCRUB_CORE_ARGS="--core-mib 1000 --size-mib 1024"
SCRUB_ARGS ?= --size-mib 100 --rounds 2
SCRUB_CORE_ARGS ?= --core-mib 50 --size-mib 256
bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/core_bench.py
	@echo "== scrubbing: the scrubber alone, and the proxy's memory on a long download"
	$(PY) benchmarks/scrub_bench.py $(SCRUB_CORE_ARGS)
	@echo "== scrubbing: downloads and server-sent events through broker-proxy run"
	$(PY) benchmarks/scrub_download_bench.py $(SCRUB_ARGS)

# An hour of paced mixed traffic (new tunnels, keep-alive, scrubbed and refused requests, audit
# rotation every 4 MB): the proxy's RSS every 5 minutes and its growth after a 5-minute warm-up.
SOAK_ARGS ?= --minutes 60 --rate 50
bench-soak: $(STAMP)
	$(PY) benchmarks/soak.py --mixed $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
