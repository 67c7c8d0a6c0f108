# Shell helpers of cleanup-orphan-processes.yml (POSIX sh, Linux /proc).
#
# A pid alone does not name a process: once it ends, its pid can be given to
# a new one. A pid and its start time (field 22 of /proc/PID/stat, clock
# ticks since boot) do, so the workflow records both when it finds a process
# and signals it only while both still match.

# proc_start PID: the start time of PID; nothing when it is gone or a zombie.
proc_start() {
  _stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # Field 2, the command name, may hold spaces and ')': cut after the last ')'.
  set -f
  # shellcheck disable=SC2086 # splitting the fields is the point
  set -- ${_stat##*") "}
  set +f
  case $1 in Z | X | x) return 0 ;; esac
  shift 19
  printf '%s\n' "$1"
}

# still_there PID START: true while that very process is alive.
still_there() {
  [ -n "$2" ] && [ "$(proc_start "$1")" = "$2" ]
}

# any_left TARGETS: true while any `PID:START` of TARGETS is alive.
any_left() {
  for _target in $1; do
    if still_there "${_target%%:*}" "${_target#*:}"; then return 0; fi
  done
  return 1
}

# signal_all SIGNAL TARGETS: send SIGNAL to each live target; print the pids sent to.
signal_all() {
  for _target in $2; do
    _pid=${_target%%:*}
    if still_there "$_pid" "${_target#*:}" && kill "-$1" "$_pid" 2>/dev/null; then
      printf '%s\n' "$_pid"
    fi
  done
}
