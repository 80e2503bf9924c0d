# Shoal: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JS_STAMP := tests/js/node_modules/.installed

.PHONY: install iproute run cluster test test-unit test-integration bench chaos fuzz clean haproxy-tool

$(STAMP): pyproject.toml
	@command -v mosquitto >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto (used by tests and benchmarks as a reference broker)"; \
	    (apt-get install -y -qq mosquitto mosquitto-clients >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null)) || \
	     echo "warning: could not install mosquitto; comparison tests and benchmarks will not run"; \
	  fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# the gRPC code of proto/*.proto is generated here, for the grpcio-tools installed
PROTO_OUT := proto/cluster_pb2.py proto/cluster_pb2_grpc.py
$(PROTO_OUT): proto/cluster.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. proto/cluster.proto

# MQTT.js and playwright-core for tests/integration/test_31_websocket.py, pinned by the lock file
# (tests only: `make install` and `make run` need neither node nor chromium)
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	@for tool in node:nodejs npm:npm chromium:chromium; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $${tool#*:} (MQTT.js WebSocket tests in node and headless Chromium)"; \
	    apt-get install -y -qq $${tool#*:} >/dev/null 2>&1 || \
	    (apt-get update -qq && apt-get install -y -qq $${tool#*:} >/dev/null) || \
	    echo "warning: could not install $${tool#*:}; the WebSocket tests with MQTT.js will fail"; \
	  fi; done
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

install: $(STAMP) $(PROTO_OUT)

# HAProxy (the Debian package) for tests/integration/test_32_haproxy.py: three nodes behind it
# (tests only: `make install` and `make run` do not need it)
haproxy-tool:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing haproxy (cluster tests behind a load balancer)"; \
	    apt-get install -y -qq haproxy >/dev/null 2>&1 || \
	    (apt-get update -qq && apt-get install -y -qq haproxy >/dev/null) || \
	    echo "warning: could not install haproxy; tests/integration/test_32_haproxy.py will fail"; \
	  fi; }

run: install
	$(VENV)/bin/circusd circus.ini

# three nodes on this host (MQTT 1883, 1884, 1885), embedded etcd members, data under data/; Ctrl-C stops
cluster: install
	$(PY) -m cluster.local

# the partition tests (test_30_cluster_partitions.py) put nodes in network namespaces: root and iproute2
IPROUTE := $(shell command -v ip 2>/dev/null)
iproute:
	@if [ -z "$(IPROUTE)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing iproute2 (network namespaces of the partition tests)"; \
	  apt-get install -y -qq iproute2 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null) || \
	  echo "warning: could not install iproute2; the partition tests will be skipped"; \
	fi

# Test files run TEST_JOBS at a time, one per core here (pytest-xdist, each file whole in one process,
# so module fixtures stay one per file); each test picks its own ports, directories and namespaces,
# so files never meet. Most of a file's time is spent waiting on nodes, timers and sockets, not on
# the CPU. TEST_JOBS=0 runs them one after another. Tests marked `alone` (a CPU storm that times a
# client) then run by themselves.
TEST_JOBS ?= 2
test: install $(JS_STAMP) iproute haproxy-tool
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not alone" tests
	$(PY) -m pytest -q -m alone tests

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install $(JS_STAMP) iproute haproxy-tool
	$(PY) -m pytest -q tests/integration

# faults (SIGKILL/SIGSTOP of nodes, agents, etcd members) under checker clients; stops by itself
chaos: install
	$(PY) -m loadtest.chaos $(CHAOS_ARGS)

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m loadtest.bench $(BENCH_ARGS)

# live fuzzing of a node (tests/fuzz/live.py); not part of `make test`; stops after FUZZ_SECONDS
FUZZ_SECONDS ?= 600
fuzz: install
	$(PY) -m tests.fuzz.live --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache tests/js/node_modules
