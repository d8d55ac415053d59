# Two entry points on a fresh machine: `make run` and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TOOLS   ?= .venv-tools
TSTAMP  := $(TOOLS)/.installed
KFP     ?= .venv-kfp
KSTAMP  := $(KFP)/.installed
ARGS    ?=

.PHONY: setup run test test-fast test-slow lint serve pipeline-env pipeline clean redis-server

setup: $(STAMP)

# The CPU stack pinned in pyproject.toml (README.md: Install; k8s/image/pins.py reads it): on Linux
# torch first, alone, from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build, several GB), then
# the project with its `cpu` and `dev` extras, then torchrec with --no-deps (its metadata pulls the
# CUDA fbgemm-gpu wheel, which fails to load without an NVIDIA driver).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PINS    := $(PY) k8s/image/pins.py pyproject.toml
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	if [ "$$(uname -s)" = Linux ]; then $(VPY) -m pip install -q --no-deps "$$($(PINS) torch)+cpu" --extra-index-url $(TORCH_INDEX); fi
	$(VPY) -m pip install -q -e ".[cpu,dev]"
	$(VPY) -m pip install -q --no-deps $$($(PINS) no-deps)
	touch $(STAMP)

# checkov and kubernetes-validate for the manifest tests, apart from the training stack.
$(TSTAMP): k8s/requirements-tools.txt
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q -r k8s/requirements-tools.txt
	touch $(TSTAMP)

# The Kubeflow Pipelines SDK (jobs/requirements-pipeline.txt) apart from the training stack (protobuf
# 6 vs 7); the project's sources on its path (a .pth file, as an editable install would add).
$(KSTAMP): jobs/requirements-pipeline.txt
	$(PY) -m venv $(KFP)
	$(KFP)/bin/python -m pip install -q -r jobs/requirements-pipeline.txt
	printf '%s\n' "$(CURDIR)/platform" > "$$($(KFP)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/argus-platform.pth"
	touch $(KSTAMP)

pipeline-env: $(KSTAMP)

# redis-server (Debian package) for the event store of `make serve` and the tests: installed with
# apt-get when absent (as root, else through sudo).
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing the Debian package redis-server (the event store of make serve and the tests)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }

# The pipeline on kfp.local with the embedded default (ARGS="compile --out argus-pipeline.yaml" to compile).
pipeline: $(STAMP) $(KSTAMP)
	$(KFP)/bin/python jobs/pipeline_argus.py $(or $(ARGS),run-local)

run: $(STAMP)
	$(VPY) jobs/train_argus.py $(ARGS)

# ruff (pyproject.toml [tool.ruff]): lint, then the format check; `ruff format .` fixes the latter.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) $(TSTAMP) $(KSTAMP) redis-server
	$(VPY) -m pytest -m "not slow" -q --durations=20 $(ARGS)

# Unit tests only: no Ray cluster, Serve, extra processes or subprocesses (about a minute on 2 cores).
test-fast: $(STAMP)
	$(VPY) -m pytest -m "not slow and not integration" -q $(ARGS)

# pytest exits 5 when nothing is marked slow; that is not a failure.
test-slow: $(STAMP) $(TSTAMP) $(KSTAMP) redis-server
	$(VPY) -m pytest -m slow -q $(ARGS) || [ $$? -eq 5 ]

# Serve the newest run under runs/ on :8000 with Serve's fast request path (serve/README.md:
# HAProxy in front of the ingress replica, gRPC between deployments) and the event store in a
# local redis-server (data in runs/redis, port 6379; ARGS="--events-store ''" serves without it).
serve: $(STAMP) redis-server
	$(VPY) -m argus_serve.local --port 8000 --events-store local $(ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) $(KFP) .pytest_cache
