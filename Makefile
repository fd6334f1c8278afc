# `make demo` and `make test` each create .venv when missing, install, and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Python compiles each module when it is first imported, and keeps the bytecode: pip's compiling
# of every file it installs (torch's CUDA build among them) took much of the install's time.
unexport PYTHONDONTWRITEBYTECODE

# uv installs what pip would, in a fraction of pip's time (CHANGELOG.md has the measurement), most
# of it torch's CUDA build. uv reads no pip configuration, so the constraints pip is configured
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
# threshold the workers' resident memory kept growing (freed model weights kept in the heap) until
# one was killed for memory. A fixed threshold also keeps glibc's default trim threshold, so the
# heap's free top goes back too. A much lower threshold mmapped every activation, and the kernel's
# page faults took a large share of the suite's CPU time. The measurements: CHANGELOG.md and
# docs/performance.md.
# --durations: the slowest tests, for keeping the suite under its 15 minutes (CONTRIBUTING.md).
test: lint
	MALLOC_MMAP_THRESHOLD_=33554432 $(PY) -m pytest -n 2 --dist loadgroup --durations=25

lint: $(STAMP)
	$(PY) -m ruff check backbones tests benchmarks weights docs/hooks hubconf.py
	$(PY) -m ruff format --check backbones tests benchmarks weights docs/hooks hubconf.py

bench: $(STAMP)
	OMP_NUM_THREADS=$$(nproc) $(PY) benchmarks/bench.py

# The documentation site (mkdocs.yml): --strict fails on a broken link, a missing page or reference.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build site *.egg-info
