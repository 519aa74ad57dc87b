# Every target bootstraps .venv on first use with a Python >= 3.12 that
# scripts/find-python finds on its own.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo run test lint bench clean

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

bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/core_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
