# Operations: the Helm chart, its offline tests, the container image. Included from the Makefile
# after VENV, PY and STAMP are defined.
#
#   make ops-setup       the Python packages the chart tests need (no helm binary, no cluster)
#   make test-ops        tests/ops only: render, lint, schema, Kubernetes schemas, runbooks
#   make helm-lint       helm lint --strict, through the Helm SDK (VALUES="ci/gpu-off-values.yaml")
#   make helm-template   print the rendered manifests (VALUES="...")
#   make helm-schema     regenerate values.config's schema from schemas/settings.py
#   make image           docker build of the cpu variant; make image-cuda for the cuda one

# helm-python-sdk binds Helm's Go SDK (v4) through a shared library shipped in its wheel, so the
# chart renders and lints exactly as helm does, offline. kubernetes-validate ships the Kubernetes
# OpenAPI JSON schemas (validated offline); promql-parser checks the alert expressions.
OPS_PY_DEPS := "helm-python-sdk>=0.2.2,<0.3" "kubernetes-validate>=1.30" "promql-parser>=0.11"
OPS_STAMP := $(VENV)/.ops-installed-stamp
VALUES ?=
IMAGE ?= eigenloop/eigenloop
APP_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: ops-setup test-ops helm-lint helm-template helm-schema image image-cuda

$(OPS_STAMP): $(STAMP) mk/ops.mk
	$(PY) -m pip install -q $(OPS_PY_DEPS)
	touch $@

ops-setup: $(OPS_STAMP)

# `make test` runs tests/ops too, so it needs these packages; harmless once they are in the dev
# extra of pyproject.toml (pip finds them already installed).
test: $(OPS_STAMP)

test-ops: $(OPS_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/ops

helm-lint: $(OPS_STAMP)
	$(PY) -m tests.ops.chart --lint $(VALUES)

helm-template: $(OPS_STAMP)
	@$(PY) -m tests.ops.chart $(VALUES)

helm-schema: $(STAMP)
	$(PY) -m tests.ops.config_schema --write

image:
	docker build --build-arg VARIANT=cpu -t $(IMAGE):$(APP_VERSION)-cpu .

image-cuda:
	docker build --build-arg VARIANT=cuda -t $(IMAGE):$(APP_VERSION)-cuda .
