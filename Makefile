# Two entry points: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := runs/demo

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

# torch is installed first and pinned to the local CPU wheel: a bare `torch` requirement would pull
# gigabytes of CUDA packages. The package's own range (torch>=2.4) is then already satisfied.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Until the Push-T task lands, the main job is the synthetic multimodal task:
# record demos -> train a diffusion policy and an MSE baseline -> check and plot multimodality.
demo: $(STAMP)
	$(PY) scripts/generate_demos.py --env diffusion_policy/ObstacleAvoid-v0 --episodes 100 \
		--out data/obstacle_avoid.zarr --workers 2 --overwrite
	$(PY) scripts/train.py task=obstacle_avoid policy=diffusion_unet_small training=demo run_dir=$(RUN)/diffusion
	$(PY) scripts/train.py task=obstacle_avoid policy=regression_mlp training=demo run_dir=$(RUN)/regression
	$(PY) scripts/multimodality.py --diffusion $(RUN)/diffusion/policy --regression $(RUN)/regression/policy \
		--out $(RUN)/multimodality

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) runs data/*.zarr
