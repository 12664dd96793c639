#!/usr/bin/env bash
# Runs the whole suite against one real Kafka broker for the session: start it under a test
# data folder, hand its address to pytest, and stop exactly that broker whatever happens.
#
# EIGENLOOP_TEST_DATA_DIR (default .eigenloop-test) and EIGENLOOP_VENV_BIN (default .venv/bin)
# exist so that this script's own start/stop can be tested against a throwaway folder.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${EIGENLOOP_VENV_BIN:-.venv/bin}"
SUITE_DATA_DIR="${EIGENLOOP_TEST_DATA_DIR:-$PWD/.eigenloop-test}"
# every broker command names the suite's folder itself: the tests must not inherit
# EIGENLOOP_DATA_DIR (they choose their own folders), and the exit trap runs after it is gone
broker() { EIGENLOOP_DATA_DIR="$SUITE_DATA_DIR" "$BIN/eigenloop" kafka "$@"; }
# a broker left by an earlier run that died before its trap (kill -9): stop it rather than
# silently reuse it and its topics
if [ "$(broker stop)" = "kafka broker stopped" ]; then
  echo "stopped a test broker left running by an earlier run" >&2
fi
broker start || exit 1
trap 'broker stop >/dev/null' EXIT
export EIGENLOOP_KAFKA_BOOTSTRAP="$(SUITE_DATA_DIR="$SUITE_DATA_DIR" "$BIN/python" -c \
  'import json,os; print(json.load(open(os.environ["SUITE_DATA_DIR"]+"/kafka/broker.json"))["bootstrap"])')"
unset EIGENLOOP_DATA_DIR  # tests choose their own data folders
# One OpenMP thread per process: the suite runs the broker, Faust workers, daemons and torch side
# by side on two cores, and spinning OpenMP threads on an oversubscribed CPU slow torch ~7x.
export OMP_NUM_THREADS=1
"$BIN/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
# pytest exits 5 when it collected nothing: that is a broken suite here, not a pass
if [ $rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit $rc
