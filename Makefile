PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo test test-slow bench device-check clean

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

test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

test-slow: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m slow

bench: $(TEST_STAMP)
	$(BIN)/scoreinv bench

device-check:   # on a CUDA machine: cuda tests, GPU bench, short CT+MRI training -> $$OUT or device_check_out/
	bash scripts/device_check.sh

clean:
	rm -rf $(VENV) demo_out
