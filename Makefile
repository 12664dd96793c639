# The two commands: `make run` (the main job) and `make test` (the whole suite).
# Both set everything up themselves and are idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
EIGENLOOP := $(VENV)/bin/eigenloop
STAMP := $(VENV)/.installed-stamp
KAFKA_JARS := .cache/kafka/libs/.complete
DEV_LOCK := requirements/dev.lock
LOCK_VENV := .cache/lock-venv
LOCK_TOOLS := pip==26.3 pip-tools==7.7.0
LOCK_STAMP := $(LOCK_VENV)/.installed-stamp
UPGRADE ?=
PYTEST_ARGS ?=

include mk/ops.mk
include mk/flink.mk

.PHONY: setup run test faults bench clean-data help lock

help:
	@echo "make run    - start the local broker and everything else, replaying ../shared/data"
	@echo "make test   - the whole test suite against a real local Kafka broker"
	@echo "make faults - the full fault-injection suite (50 kill -9s)"
	@echo "make lock   - regenerate the hashed lock files in requirements/ from pyproject.toml"

# Every dependency from the hashed lock (requirements/dev.lock: runtime + the dev extra, `make lock`
# writes it), so a clean clone gets exactly the versions the suite passed with and pip refuses a
# file whose hash changed; then the package itself, editable and without resolving anything.
# pip check fails when pyproject.toml declares something the lock lacks (run `make lock`).
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

# Regenerate requirements/*.lock from pyproject.toml (keeps existing pins; UPGRADE=1 moves them all
# to the newest allowed). pip-tools runs from its own venv, so it never touches .venv; pinned, so
# two people get the same lock format. Then `make setup` installs the new lock.
$(LOCK_STAMP): Makefile
	test -x $(LOCK_VENV)/bin/python || python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q $(LOCK_TOOLS)
	touch $@

lock: $(LOCK_STAMP)
	LOCK_UPGRADE=$(UPGRADE) $(LOCK_VENV)/bin/python scripts/lock.py

$(KAFKA_JARS): kafka/pom.xml $(STAMP)
	$(PY) -c "from daemon.ops.kafka_local import fetch_jars; fetch_jars()"

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
