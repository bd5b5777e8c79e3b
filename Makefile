# Set-up and entry points. Every target is idempotent; `make demo` and `make test` set up first.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TRITON ?= triton==3.7.1
BIN := $(VENV)/bin
WHEELHOUSE := $(VENV)/wheelhouse
STAMP := $(VENV)/.installed
KERNELS := $(VENV)/.kernels-built
KERNEL_SOURCES := $(wildcard sparse_attn_fairseq/csrc/*.cpp sparse_attn_fairseq/csrc/*.h)

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP) $(KERNELS)

# fairseq 0.12.2 and omegaconf 2.0.6 are installed from repaired wheels (tools/build_wheelhouse.py
# says why); everything else resolves normally, so this works with any pip, 24.1+ included.
$(STAMP): setup.py tools/build_wheelhouse.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "setuptools>=70" wheel numpy cython
	$(BIN)/python tools/build_wheelhouse.py $(WHEELHOUSE)
	$(BIN)/python -m pip install -q --no-deps $(WHEELHOUSE)/*.whl
	$(BIN)/python -m pip install -q $(TORCH) $(TRITON)
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test,plot]"
	touch $@ $(KERNELS)

# The fused CPU kernels (sparse_attn_fairseq/_C*.so) are compiled by the editable install; rebuilt when they change.
$(KERNELS): $(KERNEL_SOURCES) | $(STAMP)
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: setup
	PATH=$(abspath $(BIN)):$$PATH bash recipes/demo.sh

test: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest tests -q -ra

test-fast: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest tests -q -ra -m "not slow"

bench: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python bench/bench_normalizers.py

clean:
	rm -rf $(VENV) build *.egg-info sparse_attn_fairseq/_C*.so
