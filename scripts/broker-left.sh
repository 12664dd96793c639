#!/usr/bin/env bash
# Exit 1, naming the PIDs, if a Kafka broker started on DATA_DIR (default: the suite's
# .eigenloop-test) still runs; exit 0 if none does. It looks at the processes, not at the PID
# file: `eigenloop kafka stop` removes broker.json, and a stop that looked in the wrong folder
# leaves a broker whose PID file no one reads.
set -uo pipefail
cd "$(dirname "$0")/.."
# the broker's command line names its folder as `eigenloop kafka start` resolved it
props="$(realpath -m "${1:-.eigenloop-test}")/kafka/server.properties"
left=()
for proc in /proc/[0-9]*; do
  cmd="$(tr '\0' ' ' < "$proc/cmdline" 2>/dev/null)" || continue
  case "$cmd" in *"kafka.Kafka $props "*) left+=("${proc#/proc/}") ;; esac
done
if [ ${#left[@]} -gt 0 ]; then
  echo "a Kafka broker of ${props%/kafka/server.properties} is still running: pid ${left[*]}" >&2
  exit 1
fi
