PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo test test-slow bench bench-peers device-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scoreinv demo --out demo_out --overwrite

# one single-threaded pytest worker per core; a test file stays on one worker, in its order
# (tests/test_documented_commands.py runs its lines one after another in one workspace)
TEST_WORKERS ?= auto

test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m slow -n $(TEST_WORKERS) --dist loadfile

bench: $(TEST_STAMP)
	$(BIN)/scoreinv bench

# deepinv (the peer of `scoreinv bench peers`) needs a torch with a matching torchvision; the main
# .venv's torch has none that imports, so the peer runs in its own environment (CPU is enough).
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed
PEERS_ARGS ?=

$(PEERS_STAMP): pyproject.toml
	test -x $(PEERS)/bin/python || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PEERS)/bin/pip install --quiet deepinv==0.5.0
	$(PEERS)/bin/pip install --quiet -e . 'torch==2.14.1'
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)   # deepinv's DiffPIR, DDRM, DPS with our prior vs our solvers; PEERS_ARGS='--images 2'
	OMP_NUM_THREADS=1 $(PEERS)/bin/scoreinv bench peers $(PEERS_ARGS)

device-check:   # on a CUDA machine: cuda tests, GPU bench, short CT+MRI training -> $$OUT or device_check_out/
	bash scripts/device_check.sh

clean:
	rm -rf $(VENV) demo_out
