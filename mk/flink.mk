# The PyFlink job (streams/flink_job.py): its own Python environment and the Kafka connector jar.
# Included from the Makefile after VENV, PY and STAMP are defined.
#
#   make flink-setup   PyFlink into .cache/flink-venv, the Kafka connector jar into .cache/flink
#   make test-flink    tests/flink only (parity with the Faust worker, restart from a checkpoint)
#   make bench-flink   benchmarks/flink_vs_faust.py (events/s, Faust vs Flink, parallelism 1 and 2)
#
# Why a second virtualenv: PyFlink 2.x requires apache-beam<=2.61, which pins dill 0.3.1.1 and
# pyarrow<17 (and PyFlink itself pandas<2.3), while the main environment's trl -> datasets
# needs dill>=0.4 (through multiprocess) and a newer pyarrow; pip cannot put both in one
# environment. The job only needs schemas/ and streams/ (pydantic) and a Kafka client for its lag
# probe; it gets our packages on PYTHONPATH;
# `eigenloop streams flink` (main environment) starts it with this environment's interpreter.
#
# Versions: PyFlink 2.2.1 with flink-sql-connector-kafka 5.0.0-2.2 (see flink/pom.xml for why).
PYFLINK_REQ := apache-flink==2.2.1
# confluent-kafka: the job's lag probe (streams/flink_lag.py); librdkafka speaks Kafka 4
FLINK_PY_DEPS := "pydantic>=2.7" "pydantic-settings>=2.4" "pyyaml>=6" "confluent-kafka>=2.6"
FLINK_VENV := .cache/flink-venv
FLINK_PY := $(FLINK_VENV)/bin/python
FLINK_STAMP := $(FLINK_VENV)/.installed-stamp
FLINK_JARS := .cache/flink/.complete

.PHONY: flink-setup test-flink bench-flink

$(FLINK_STAMP): mk/flink.mk
	test -x $(FLINK_PY) || python3 -m venv $(FLINK_VENV)
	$(FLINK_PY) -m pip install -q "$(PYFLINK_REQ)" $(FLINK_PY_DEPS)
	touch $@

# copy-dependencies resolves a relative outputDirectory against the pom's folder: pass it absolute
$(FLINK_JARS): flink/pom.xml
	mkdir -p .cache/flink
	mvn -q -B -f flink/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/.cache/flink \
		-DincludeScope=runtime
	touch $@

flink-setup: $(STAMP) $(FLINK_STAMP) $(FLINK_JARS)

# `make test` collects tests/flink too; they need the environment and the jar
test: $(FLINK_STAMP) $(FLINK_JARS)

test-flink: setup flink-setup
	bash scripts/test.sh tests/flink

bench-flink: setup flink-setup
	$(PY) benchmarks/flink_vs_faust.py
