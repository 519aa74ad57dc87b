# Every target bootstraps .venv on first use with a Python >= 3.12 that
# scripts/find-python finds on its own (scripts/install-venv: uv when on PATH, else pip; for the
# test extras a uv it installs once into ~/.cache/broker-proxy/uv, several times faster than pip).
# `demo` and `run` install only the product; the other targets add the test extras.
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed

.PHONY: demo run test test-prereqs lint bench bench-peers bench-scale bench-soak clean

$(DEMO_STAMP): pyproject.toml
	@scripts/install-venv demo
	@touch $(DEMO_STAMP)

$(STAMP): pyproject.toml
	@scripts/install-venv test
	@touch $(DEMO_STAMP) $(STAMP)

demo: $(DEMO_STAMP)
	@$(VENV)/bin/broker-proxy demo
	@echo "broker-proxy is installed in $(VENV)/bin only: 'source $(VENV)/bin/activate' puts it on PATH"

run: $(DEMO_STAMP)
	$(VENV)/bin/broker-proxy run --certs certs $(ARGS)

# redis-server and a Chromium: installed with apt-get where it can (root on Debian), else one
# line saying what to install, before anything else runs.
test-prereqs:
	@scripts/test-prereqs

# pytest runs in parallel workers (pytest-xdist), each test file on one worker so a module's
# proxy starts once; files marked `slow` are handed out first. Many end-to-end tests wait on
# processes, so more workers than cores pays; on 2 cores 3 beat 4 once the tests' processes came
# from the zygote below (4:30 against 4:45 for the suite, 405 against 515 s of CPU, one run
# each). PYTEST_ARGS comes last and wins, for example:
#   make test PYTEST_ARGS="-n0 -k foo"     (serial, one test)
#   make test PYTEST_WORKERS=8
# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set: every proxy process a test
# starts would otherwise compile the package again (about 0.3 s of CPU each, hundreds of times).
# The tests' `python -m broker_proxy.cli` processes (ProxyProcess, the CLI helpers) are forked
# from a pre-imported zygote per worker (broker_proxy/devtools/prefork.py, switched on in
# tests/conftest.py), saving the imports of each; BROKER_PROXY_TEST_PREFORK=0 execs them all:
#   make test BROKER_PROXY_TEST_PREFORK=0
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=
# mypy runs beside pytest: its ~12 s of CPU fill the moments the tests wait on processes, and
# its report is printed after theirs. Either failing fails the target.
test: test-prereqs $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/broker-proxy policy test policies/
	@$(PY) -m mypy > $(VENV)/mypy-report.txt 2>&1 & typecheck=$$!; \
	echo "$(PY) -m mypy (beside the tests; its report follows theirs)"; \
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 $(PYTEST_ARGS); \
	tests=$$?; wait $$typecheck; typed=$$?; \
	echo "== $(PY) -m mypy"; cat $(VENV)/mypy-report.txt; \
	if [ $$tests -ne 0 ]; then exit $$tests; fi; exit $$typed

lint: $(STAMP)
	$(PY) -m ruff check .

# Scrubbing sizes are modest so `make bench` takes minutes; with the 1 GB runs:
#   make bench SCRUB_ARGS="--size-mib 100 1024" SCRUB_CORE_ARGS="--core-mib 1000 --size-mib 1024"
SCRUB_ARGS ?= --size-mib 100 --rounds 3
SCRUB_CORE_ARGS ?= --core-mib 50 --size-mib 256
CPU_COMPARE_ARGS ?= --rounds 6 --seconds 4
bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/core_bench.py
	@echo "== scrubbing: the scrubber alone, and the proxy's memory on a long download"
	$(PY) benchmarks/scrub_bench.py $(SCRUB_CORE_ARGS)
	@echo "== scrubbing: downloads, server-sent events and WebSocket messages through broker-proxy run"
	$(PY) benchmarks/scrub_download_bench.py $(SCRUB_ARGS)
	@echo "== CPU per request (https-keepalive) against the commit before every grant answer was scrubbed"
	$(PY) benchmarks/cpu_compare.py $(CPU_COMPARE_ARGS)
	@echo "== cost that grows with the store or the policy: make bench-scale (minutes); the hour-long soak: make bench-soak"

# The broker against direct, mitmdump, mitmdump -s and Squid ssl-bump (where squid-openssl is
# installed), 5 rotated rounds (about 6 minutes); docs/benchmarks.md. A quick run:
#   make bench-peers PEERS_ARGS="--rounds 1 --seconds 2"
PEERS_ARGS ?=
bench-peers: $(STAMP)
	$(PY) benchmarks/peers.py --markdown $(PEERS_ARGS)

# Figures that grow with the size of the store or the policy (minutes; not part of `make bench`):
# 1 grant against 1,000,000 (SQLite and Redis), then policy check and reload at 1,000 and
# 100,000 secrets. A quick run: make bench-scale SCALE_ARGS="--grants 10000"
SCALE_ARGS ?=
POLICY_SCALE_ARGS ?=
bench-scale: $(STAMP)
	@echo "== scale: grants (start-up, idle CPU, CPU per request, RSS at 1 and N grants)"
	$(PY) benchmarks/scale_bench.py $(SCALE_ARGS)
	@echo "== policy scale: policy check and reload at 1,000 and 100,000 secrets"
	$(PY) benchmarks/policy_scale_bench.py $(POLICY_SCALE_ARGS)

# An hour of paced mixed traffic (new tunnels, keep-alive, scrubbed and refused requests, audit
# rotation every 4 MB): the proxy's RSS every 5 minutes and its growth after a 5-minute warm-up.
SOAK_ARGS ?= --minutes 60 --rate 50
bench-soak: $(STAMP)
	$(PY) benchmarks/soak.py --mixed $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
