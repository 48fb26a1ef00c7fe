# Two entry points: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := runs/demo
# Debian ships Fashion-MNIST (the image baselines' data); apt-get needs root, so sudo when we are not.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# MuJoCo renders offscreen through EGL: Mesa's EGL vendor library (software rendering on a CPU-only machine).
EGL_MESA := /usr/share/glvnd/egl_vendor.d/50_mesa.json
EXTRAS := dev,pusht-original,image,metaworld,formats
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo demo-multimodal robot pixels image image-baseline metaworld test test-slow bench clean

setup: $(STAMP) $(FASHION_MNIST) $(EGL_MESA)

$(FASHION_MNIST):
	$(SUDO) apt-get install -y -q dataset-fashion-mnist || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist)

$(EGL_MESA):
	$(SUDO) apt-get install -y -q libegl1 libegl-mesa0 libgl1-mesa-dri || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q libegl1 libegl-mesa0 libgl1-mesa-dri)

# torch is installed first, pinned: the machines this project is built on serve a CPU wheel from their
# pip configuration. On a stock pip, PyPI's torch is the CUDA build (gigabytes of CUDA packages); for
# the CPU one say `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` (PyTorch's CPU index).
# The package's own range (torch>=2.4) is then already satisfied.
# The metaworld extra pins mujoco==3.3.0; MuJoCo 4 splits into mujoco-core and mujoco-studio, whose
# files a downgrade would leave behind, so a venv that has them drops all three first.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	if $(PY) -m pip show --quiet mujoco-core 2>/dev/null; then \
		$(PY) -m pip uninstall --yes --quiet mujoco mujoco-core mujoco-studio; fi
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The main job, on embedded defaults (nothing downloaded): 200 scripted-expert Push-T demos ->
# train a low-dim diffusion policy on the CPU -> evaluate 50 closed-loop episodes (metrics + videos).
# Each stage's start time goes to $(RUN)/pusht/stages.txt; scripts/demo_summary.py collects the
# figures README quotes into $(RUN)/pusht/summary.json.
demo: $(STAMP)
	rm -rf $(RUN)/pusht && mkdir -p $(RUN)/pusht && echo "demos $$(date +%s.%N)" > $(RUN)/pusht/stages.txt
	$(PY) scripts/generate_demos.py --env diffusion_policy/PushT-v0 --episodes 200 \
		--out data/pusht.zarr --workers 2 --overwrite
	echo "train $$(date +%s.%N)" >> $(RUN)/pusht/stages.txt
	$(PY) scripts/train.py task=pusht policy=diffusion_unet_small training=pusht_demo eval.enabled=false \
		run_dir=$(RUN)/pusht
	echo "eval $$(date +%s.%N)" >> $(RUN)/pusht/stages.txt
	$(PY) scripts/eval.py --policy $(RUN)/pusht/policy --episodes 50 --envs 8 --videos 3 --out $(RUN)/pusht/eval
	echo "end $$(date +%s.%N)" >> $(RUN)/pusht/stages.txt
	$(PY) scripts/demo_summary.py --run $(RUN)/pusht --demos data/pusht.zarr

# The synthetic two-mode task: diffusion policy vs an MSE regressor, checked and plotted.
demo-multimodal: $(STAMP)
	$(PY) scripts/generate_demos.py --env diffusion_policy/ObstacleAvoid-v0 --episodes 100 \
		--out data/obstacle_avoid.zarr --workers 2 --overwrite
	$(PY) scripts/train.py task=obstacle_avoid policy=diffusion_unet_small training=demo eval.vector=sync \
		run_dir=$(RUN)/diffusion
	$(PY) scripts/train.py task=obstacle_avoid policy=regression_mlp training=demo eval.vector=sync \
		run_dir=$(RUN)/regression
	$(PY) scripts/multimodality.py --diffusion $(RUN)/diffusion/policy --regression $(RUN)/regression/policy \
		--out $(RUN)/multimodality

# The demo's policy in a real-time control loop on the simulated Push-T robot (after `make demo`).
robot: $(STAMP)
	$(PY) scripts/run_robot.py --policy $(RUN)/pusht/policy --episodes 5 --plot --out $(RUN)/robot

# Push-T from pixels (docs/visuomotor.md): 200 expert demos with the 96 x 96 camera, the CPU-sized
# image policy (ResNet-18-GN width 16 + U-Net [64, 128, 256], 8000 steps, about 1.5 hours on
# 2 cores), then 50 closed-loop episodes.
pixels: $(STAMP) $(EGL_MESA)
	$(PY) scripts/generate_demos.py --env diffusion_policy/PushT-v0 --env-kwargs '{"obs_type": "pixels_agent_pos"}' \
		--episodes 200 --out data/pusht_pixels.zarr --workers 2 --overwrite
	$(PY) scripts/train.py task=pusht_pixels policy=diffusion_unet_image_small training=pusht_image_cpu \
		eval.enabled=false run_dir=$(RUN)/pixels
	$(PY) scripts/eval.py --policy $(RUN)/pixels/policy --episodes 50 --envs 8 --videos 3 --out $(RUN)/pixels/eval

# Image generation on the shared core: our 2-D U-Net on Fashion-MNIST for 25 CPU minutes, then its
# sampler table (quality vs steps vs seconds); `image-baseline` trains diffusers' UNet2DModel alike.
image: $(STAMP) $(FASHION_MNIST)
	$(PY) scripts/train_image.py run_dir=$(RUN)/image_ours
	$(PY) scripts/sample_images.py --model $(RUN)/image_ours --evaluate 1000 --guidance 2

image-baseline: $(STAMP) $(FASHION_MNIST)
	$(PY) scripts/train_image.py image_model=diffusers run_dir=$(RUN)/image_diffusers
	$(PY) scripts/sample_images.py --model $(RUN)/image_diffusers --evaluate 1000 --guidance 2

# Meta-World: the DP3 paper's eight tasks, 10 expert demos, 3 training seeds x 50 episodes each
# (docs/metaworld.md); results in runs/metaworld/results.{md,json,png}. 24 trainings of 6000 steps:
# about 5 hours on 2 CPU cores; interrupted, `... --skip-done` continues it.
metaworld: $(STAMP) $(EGL_MESA)
	$(PY) scripts/benchmark_metaworld.py --out runs/metaworld

test: $(STAMP) $(FASHION_MNIST) $(EGL_MESA)
	$(PY) -m pytest -q

test-slow: $(STAMP) $(FASHION_MNIST) $(EGL_MESA)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) runs data/*.zarr
