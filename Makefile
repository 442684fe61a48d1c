# Two commands on a fresh machine:
#   make demo   # venv + pinned installs, generate videos, train a tiny V-JEPA on CPU, probe it
#   make test   # the whole test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
CSRC   := $(wildcard csrc/cpu/*.cpp csrc/cpu/*.h)

.PHONY: demo test bench install build clean

demo: build
	$(PY) -m engine.demo

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) bench/run_kernels.py --quick

install: $(STAMP)

# torch first, pinned: any unpinned torch requirement would pull a multi-GB CUDA build. TORCH_INDEX
# picks the build (a plain install of torch on Linux x86 is the CUDA one):
#   make demo TORCH_INDEX=<the CPU wheel index PyTorch's "Get started" page shows>
TORCH_INDEX ?=
# setuptools >= 77 reads pyproject.toml's SPDX license field; a new venv of Python 3.11 has 65.
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools==84.2.1 wheel==0.48.0
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	DS_BUILD_OPS=0 $(PIP) install -q -r requirements.txt
	touch $(STAMP)

# The C++ ops, built against the venv's torch (no build isolation: it must not fetch another torch).
kernels/.built: $(STAMP) setup.py $(CSRC)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch kernels/.built

build: kernels/.built

clean:
	rm -rf build *.egg-info kernels/*.so kernels/.built
