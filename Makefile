# Two entry points, each self-contained on a fresh machine:
#   make demo   -> virtual environment + package, then the main job
#   make test   -> virtual environment + package, then the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# torch: this pin takes the CPU wheel that lies on the build machines' disk.
# GPU users: install the torch build you want into the venv first; pyproject keeps a range.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: demo test venv lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/sftl demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	@if [ "$${SFTL_INSTALL_SLURM:-0}" = 1 ]; then bash deploy/slurm/install-packages.sh; fi
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sftl_dask tests benchmarks tools

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
