# The two commands: `make run` (the main job) and `make test` (the whole suite).
# Both set everything up themselves and are idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
EIGENLOOP := $(VENV)/bin/eigenloop
STAMP := $(VENV)/.installed-stamp
KAFKA_JARS := .cache/kafka/libs/.complete
PYTEST_ARGS ?=

include mk/ops.mk
include mk/flink.mk

.PHONY: setup run test faults bench clean-data help

help:
	@echo "make run    - start the local broker and everything else, replaying ../shared/data"
	@echo "make test   - the whole test suite against a real local Kafka broker"
	@echo "make faults - the full fault-injection suite (50 kill -9s)"

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(KAFKA_JARS): kafka/pom.xml $(STAMP)
	$(PY) -c "from daemon.kafka_local import fetch_jars; fetch_jars()"

setup: $(STAMP) $(KAFKA_JARS)

run: setup
	$(EIGENLOOP) run

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

# the full fault-injection suite: 50 kill -9s, a broker restart, 10k bad frames, 1k bad records
faults: setup
	EIGENLOOP_FAULTS_KILLS=50 bash scripts/test.sh -s tests/faults

clean-data:
	-$(EIGENLOOP) kafka stop
	-EIGENLOOP_DATA_DIR=$(CURDIR)/.eigenloop-test $(EIGENLOOP) kafka stop
	rm -rf .eigenloop .eigenloop-test
