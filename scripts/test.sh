#!/usr/bin/env bash
# Runs the whole suite against one real Kafka broker for the session: start it under a test
# data folder, hand its address to pytest, and stop it whatever happens.
set -uo pipefail
cd "$(dirname "$0")/.."
export EIGENLOOP_DATA_DIR="$PWD/.eigenloop-test"
EIGENLOOP=.venv/bin/eigenloop
$EIGENLOOP kafka start || exit 1
trap '$EIGENLOOP kafka stop >/dev/null' EXIT
export EIGENLOOP_KAFKA_BOOTSTRAP="$(.venv/bin/python -c 'import json,os; print(json.load(open(os.environ["EIGENLOOP_DATA_DIR"]+"/kafka/broker.json"))["bootstrap"])')"
unset EIGENLOOP_DATA_DIR  # tests choose their own data folders
# One OpenMP thread per process: the suite runs the broker, Faust workers, daemons and torch side
# by side on two cores, and spinning OpenMP threads on an oversubscribed CPU slow torch ~7x.
export OMP_NUM_THREADS=1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
# pytest exits 5 when it collected nothing: that is a broken suite here, not a pass
if [ $rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit $rc
