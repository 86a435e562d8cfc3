# neurounlearn: `make demo` and `make test` set everything up on a fresh CPU machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Pinned CPU build first: an unpinned torch would pull several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/neurounlearn demo --out demo_out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/mypy src/neurounlearn
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/mypy src/neurounlearn

# The documentation site (mkdocs.yml, docs/; benchmark pages come from benchmarks/results/*.md).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/tabular_openneuro.py
	$(BIN)/python benchmarks/tabular_knobs.py
	$(BIN)/python benchmarks/image_speed.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/gpu.py --tiny
	$(BIN)/python benchmarks/image_sim.py
	$(BIN)/python benchmarks/adversary_view.py
	$(BIN)/python benchmarks/paper.py
	$(BIN)/python benchmarks/compare_openneuro.py
	$(BIN)/python benchmarks/erasure.py
	$(BIN)/python benchmarks/erasure_diagnostic.py
	$(BIN)/python benchmarks/unseen_sites.py
	$(BIN)/python benchmarks/report_image.py
	$(BIN)/python benchmarks/segmentation.py

clean:
	rm -rf $(VENV) demo_out site .pytest_cache .ruff_cache .mypy_cache
