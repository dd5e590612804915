# edgewatch: `make demo` runs the main job end to end, `make test` runs every check.
# Both set up what they need on a fresh machine (Debian packages, venv, Kafka jars).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JARS   := .cache/kafka-libs/.fetched
PYTEST_ARGS ?=

.PHONY: setup native system-deps central-deps lint typecheck pytest test test-unit test-deploy test-arm64 deploy-deps demo loop bench stack-up stack-down stack-status bundles clean

setup: system-deps $(STAMP) $(JARS) central-deps native

system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
		{ echo "installing mosquitto"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto; }
	@command -v java >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openjdk-17-jre-headless; }
	@command -v mvn >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq maven; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[edge,train,dev]"
	touch $@

# The agent's native payload reader (agent/native, Rust; optional: without it the agent reads
# payloads in Python). Cargo's build directory is kept in $EDGEWATCH_CACHE, outside the clone.
CACHE  ?= $(or $(EDGEWATCH_CACHE),$(HOME)/.cache/edgewatch)
CARGO  ?= $(shell command -v cargo || echo $(HOME)/.cargo/bin/cargo)
NATIVE := agent/_rows.abi3.so

native: $(NATIVE)

$(NATIVE): agent/native/Cargo.toml agent/native/Cargo.lock agent/native/src/lib.rs
	@[ -x "$(CARGO)" ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cargo; }
	$(or $(wildcard $(CARGO)),cargo) build -q --release --locked \
		--manifest-path agent/native/Cargo.toml --target-dir $(CACHE)/cargo-target
	cp $(CACHE)/cargo-target/release/lib_rows.so $@

$(JARS): deploy/dev/kafka/pom.xml
	mvn -q -B -f deploy/dev/kafka/pom.xml dependency:copy-dependencies
	touch $@

# The Flink distribution (+ SQL Gateway, Kafka connector) for the central engine, kept in
# $EDGEWATCH_CACHE (default ~/.cache/edgewatch), outside the clone; a no-op once it is there.
central-deps: $(STAMP)
	$(PY) deploy/dev/stack.py fetch-central

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: setup deploy-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) native
	$(PY) -m pytest -m "not broker" $(PYTEST_ARGS)

test: setup lint typecheck pytest

# The install on a booted Debian 12 (systemd-nspawn; root). The Debian root is debootstrapped
# once into $EDGEWATCH_CACHE (default ~/.cache/edgewatch), outside the clone.
deploy-deps:
	@command -v systemd-nspawn >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq systemd-container debootstrap; }
	$(SUDO) $(PY) deploy/dev/nspawn.py base

test-deploy: setup deploy-deps
	$(SUDO) $(PY) -m pytest tests/deploy $(PYTEST_ARGS)

# The edge extra on an emulated aarch64 Debian 12 (qemu-user-static; root): installs from
# wheels only, both bundles score as on x86_64. Root cached in $EDGEWATCH_CACHE. Not in `test`.
test-arm64: setup
	$(SUDO) env EDGEWATCH_TEST_ARM64=1 $(PY) -m pytest tests/deploy/test_arm64.py $(PYTEST_ARGS)

demo: setup
	$(PY) deploy/dev/demo.py

# The closed loop on one box: replay → agent → bridge → Kafka → SQL → labels → retrain →
# gate → publish → the agent serves the new version (scoreboard with each stage's time).
loop: setup
	$(PY) deploy/dev/loop.py

# Re-execute the data scientist's notebook in place (outputs kept) against a prepared stack.
notebook: setup
	$(PY) deploy/dev/loop.py notebook

bench: setup
	$(PY) tests/bench/agent_throughput.py --json
	$(PY) tests/bench/bridge_throughput.py --json
	$(PY) tests/bench/central_throughput.py --json

bundles: setup
	$(VENV)/bin/edgewatch-models build-bundles

stack-up: setup
	$(PY) deploy/dev/stack.py up

stack-down:
	$(PY) deploy/dev/stack.py down

stack-status:
	$(PY) deploy/dev/stack.py status

clean:
	-$(PY) deploy/dev/stack.py destroy
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache $(NATIVE)
