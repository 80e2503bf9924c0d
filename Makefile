# Shoal: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JS_STAMP := tests/js/node_modules/.installed

.PHONY: install run test test-unit test-integration bench fuzz clean

$(STAMP): pyproject.toml
	@command -v mosquitto >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto (used by tests and benchmarks as a reference broker)"; \
	    (apt-get install -y -qq mosquitto mosquitto-clients >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null)) || \
	     echo "warning: could not install mosquitto; comparison tests and benchmarks will not run"; \
	  fi; }
	@for tool in node:nodejs npm:npm chromium:chromium; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $${tool#*:} (MQTT.js WebSocket tests in node and headless Chromium)"; \
	    apt-get install -y -qq $${tool#*:} >/dev/null 2>&1 || \
	    (apt-get update -qq && apt-get install -y -qq $${tool#*:} >/dev/null) || \
	    echo "warning: could not install $${tool#*:}; the WebSocket tests with MQTT.js will fail"; \
	  fi; done
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# MQTT.js and playwright-core for tests/integration/test_31_websocket.py, pinned by the lock file
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

install: $(STAMP) $(JS_STAMP)

run: install
	$(VENV)/bin/circusd circus.ini

test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install
	$(PY) -m pytest -q tests/integration

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m loadtest.bench $(BENCH_ARGS)

# live fuzzing of a node (tests/fuzz/live.py); not part of `make test`; stops after FUZZ_SECONDS
FUZZ_SECONDS ?= 600
fuzz: install
	$(PY) -m tests.fuzz.live --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache tests/js/node_modules
