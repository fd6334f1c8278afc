# `make demo` and `make test` each create .venv when missing, install, and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Python compiles each module when it is first imported, and keeps the bytecode: pip's compiling
# of every file it installs (torch's CUDA build is 5.5 GB) took half of the 2-minute install.
unexport PYTHONDONTWRITEBYTECODE

# uv installs what pip would, in a third of the time: 20 s against pip's 56 s here, most of it
# torch's 5.5 GB CUDA build. uv reads no pip configuration, so the constraints pip is configured
# with (this machine caps torch's version) are passed on. Where uv cannot be had or fails, pip
# installs. Re-install only when the dependency declarations change.
PIP_CONSTRAINTS = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^.*\.constraint='\(.*\)'$$/\1/p")

$(STAMP): pyproject.toml requirements.txt | $(PY)
	( $(PY) -m pip install --quiet uv && \
	  $(PY) -m uv pip install --quiet --python $(PY) $(addprefix --constraint ,$(PIP_CONSTRAINTS)) -r requirements.txt ) || \
	( $(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet --no-compile -r requirements.txt )
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m backbones demo

# Allocations of 32 MB and more by mmap, returned to the system when freed: with glibc's adaptive
# threshold the workers' resident memory grew to about 12 GB each (freed model weights kept in the
# heap) and one was killed for memory on this 24 GB machine. A fixed threshold also keeps glibc's
# 128 KB trim threshold, so the heap's free top goes back too: the two workers peaked at 7.7 and
# 5.8 GB. A 128 KB threshold mmapped every activation, and the kernel's page faults took a quarter
# of the suite's CPU time (the suite 982 s, against 813 s at 32 MB).
# --durations: the slowest tests, for keeping the suite under its 15 minutes (CONTRIBUTING.md).
test: lint
	MALLOC_MMAP_THRESHOLD_=33554432 $(PY) -m pytest -n 2 --dist loadgroup --durations=25

lint: $(STAMP)
	$(PY) -m ruff check backbones tests benchmarks weights hubconf.py
	$(PY) -m ruff format --check backbones tests benchmarks weights hubconf.py

bench: $(STAMP)
	OMP_NUM_THREADS=$$(nproc) $(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
