# One venv serves nf-fit, nf-bench, ns-train and the tests.
# torch 2.14.1 + torchvision 0.29.1 are the builds nerfstudio's torchvision needs (local wheels here).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean gpu-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev,nerfstudio,peers,ray]'
	# Debian's chromium lets the viewer test open ns-train's viser page headless; without it that test skips.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium not installed: tests/nerfstudio_plugin/test_viewer.py will be skipped"
	touch $(STAMP)

install: $(STAMP)

## Fit the bundled photo with full-batch L-BFGS; results land in outputs/demo/.
demo: $(STAMP)
	$(VENV)/bin/nf-fit examples/astronaut_256.png --optim lbfgs --steps 300 --out outputs/demo --overwrite

## The test suite (CPU, a few minutes). pytest's exit 5 (no tests collected) fails the target.
test: $(STAMP)
	$(PY) -m pytest

## Wheels the GPU suite needs on a bare CUDA machine (Python 3.12 with torch, numpy, scikit-image, matplotlib):
## carry .whl there and run: python3 -m benchmarks.gpu_suite --wheels .whl
gpu-wheels:
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1

clean:
	rm -rf $(VENV) outputs .pytest_cache
