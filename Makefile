# sovledger — the two commands a newcomer types are `make demo` and `make test`.
# Both create/refresh the virtualenv (.venv) and the generated protobuf code themselves.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/sovledger_pb/*.proto)
PB     := proto/sovledger_pb/ledger_pb2.py
SEEDS  ?= 10000

.PHONY: all setup proto demo test test-fast test-faults lint bench bench-scale sim clean distclean

all: test

$(STAMP): pyproject.toml setup.py $(wildcard ledger/_native/*.c)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

$(PB): $(PROTOS) $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--mypy_out=proto --mypy_grpc_out=proto $(PROTOS)
	@touch $(PB)

setup: $(STAMP) $(PB)

proto: $(PB)

demo: setup
	$(BIN)/python -m sovledger demo

# the fault suite's fast part (tests/faults without the faults_slow marker) runs inside `make test`
test: setup
	$(BIN)/python -m pytest -q -m "not faults_slow" --durations=15

# the whole fault matrix (docs/reliability.md): kills, pauses, partitions, full disk, damaged stores …
# mount(8) for the tmpfs is a Debian package; installed here only where missing (as root)
test-faults: setup
	@command -v mount >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -q mount)
	$(BIN)/python -m pytest -q -s tests/faults tests/sim/test_scenarios.py tests/federation/test_federation_3x3.py \
		tests/netting/test_federation_faults.py tests/node/test_memory_region.py

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slow"

lint: setup
	$(BIN)/ruff check node consensus ledger clients sovledger tests bench
	$(BIN)/mypy --strict node consensus ledger clients sovledger
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.single_node
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.region
	$(BIN)/python -m bench.tls_cost
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench.plot
	$(BIN)/python -m bench.report --issue

bench-scale: setup
	$(BIN)/python -m bench.scale

sim: setup
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --nodes 3
	$(BIN)/python -m tests.sim --seeds $$(( $(SEEDS) / 5 )) --start 100000 --nodes 5
	$(BIN)/python -m tests.sim --seeds $$(( $(SEEDS) / 5 )) --start 200000 --ledger

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache demo-data
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) proto/sovledger_pb/*_pb2*.py proto/sovledger_pb/*_pb2*.pyi *.egg-info
