#!/usr/bin/env bash
# `runner retry` inside an existing shell script: one command at a time gets
# classification, backoff, a circuit and a place in the redrive queue, with
# no workflow file. Run it, and watch the retry lines on stderr:
#
#   RUNNER_STATE=/tmp/retry-demo bash examples/retry-in-shell.sh
#   runner --state /tmp/retry-demo status          # one run per task id
#   runner --state /tmp/retry-demo circuits show example-api
set -euo pipefail

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A flaky fetch: "503" twice, then it prints the config. Its counter lives in
# a file because each attempt is a new process.
flaky_fetch='
  n=$(( $(cat "$1" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$1"
  if [ "$n" -le 2 ]; then echo "HTTP/1.1 503 Service Unavailable" >&2; exit 1; fi
  echo "setting=42"'

# Retried with backoff (100 ms, doubling, full jitter); the command's output
# is replayed as if it had run in place, so it can be captured.
config=$(runner retry fetch-config --max-attempts 5 --initial 100ms --max 1s \
  -- sh -c "$flaky_fetch" sh "$work/fetch-count")
echo "fetched: $config"

# A permanent error (here a 404) is not retried: the task fails at once, exit 1.
# A task that runs out of attempts instead waits for `runner redrive TASK_ID`.
if ! runner retry delete-remote --initial 100ms \
  -- sh -c 'echo "HTTP/1.1 404 Not Found" >&2; exit 1'; then
  echo "delete-remote failed for good (404), not retried"
fi

# Guard calls with a circuit shared with every other script on this store.
# With --no-wait a refused call fails at once instead of waiting parked.
runner circuits reset example-api >/dev/null
runner retry ping-api --circuit example-api --no-wait --initial 100ms -- true
if runner circuits check example-api; then
  echo "circuit example-api admits calls"
fi
