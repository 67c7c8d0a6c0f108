#!/usr/bin/env bash
# A circuit breaker in bash and jq, its state in a JSON file: the naive design
# `runner circuits` replaces, kept as the reference of bench/circuits.py.
#
#   jq_breaker.sh STATE_FILE record-failure|record-success [COUNT]
#   jq_breaker.sh STATE_FILE check        # exit 0 closed, 1 open
#
# Each update reads the file, changes it with jq and writes it back through a
# temporary file and `mv`, so no reader ever sees half a file. There is no
# lock: two processes that read the same version both write their own next
# version, and one of the two updates is lost. That is the point of keeping it.
#
# Every update counts itself in `recorded`, so lost updates are the number of
# calls made minus the final `recorded`. Each CLOSED -> OPEN transition this
# process saw is appended to STATE_FILE.events (appends of one short line are
# atomic), so openings are counted even when the file loses them.
#
# JQ_BREAKER_THRESHOLD (default 3) is the failure threshold. There is no
# half-open state: the reference only needs to show counting and opening.
set -euo pipefail

state=$1
action=$2
count=${3:-1}
threshold=${JQ_BREAKER_THRESHOLD:-3}

if [ ! -s "$state" ]; then
    echo '{"state": "CLOSED", "failure_count": 0, "recorded": 0}' >"$state"
fi

# Prints the transition ("opened" or "-") on one line, the new state on the next.
update='
  .recorded += 1
  | if $outcome == "success" then [., "-"] | .[0].failure_count = 0
    elif .state == "OPEN" then [., "-"]
    elif .failure_count + 1 >= $threshold then
      [.state = "OPEN" | .failure_count = 0, "opened"]
    else [.failure_count += 1, "-"]
    end
  | .[1], (.[0] | tostring)
'

record() {
    local outcome=$1 tmp="$state.$$" transition document
    {
        read -r transition
        read -r document
    } < <(jq -r --arg outcome "$outcome" --argjson threshold "$threshold" \
        "$update" "$state")
    printf '%s\n' "$document" >"$tmp"
    mv "$tmp" "$state"
    if [ "$transition" = opened ]; then
        echo opened >>"$state.events"
    fi
}

case $action in
record-failure | record-success)
    for ((i = 0; i < count; i++)); do
        record "${action#record-}"
    done
    ;;
check)
    [ "$(jq -r .state "$state")" = CLOSED ]
    ;;
*)
    echo "usage: $0 STATE_FILE record-failure|record-success|check [COUNT]" >&2
    exit 2
    ;;
esac
