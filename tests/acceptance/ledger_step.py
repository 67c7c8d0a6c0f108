"""A test step that records each execution in a side-effect ledger (FAULTS T3).

    ledger_step.py LEDGER STEP MS [EXIT]

Appends `STEP ATTEMPT PID start TIME` to LEDGER (O_APPEND, then fsync), holds
an flock on `LEDGER.STEP.lock` while it works (sleeps MS milliseconds), writes
the output `out=STEP<$LEDGER_IN>` to $RUNNER_OUTPUT, appends `... end TIME`
and exits EXIT (default 0). When the lock is already held, another execution
of the same step is alive at once: it appends `... OVERLAP TIME` first.

Run with `python -I -S`: it imports only the standard library's builtins.
"""

import fcntl
import os
import sys
import time


def append(ledger: str, step: str, word: str) -> None:
    attempt = os.environ.get("RUNNER_ATTEMPT", "0")
    line = f"{step} {attempt} {os.getpid()} {word} {time.time():.6f}\n"
    descriptor = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def hold_lock(ledger: str, step: str) -> int:
    lock = os.open(f"{ledger}.{step}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        append(ledger, step, "OVERLAP")
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def main(argv: list[str]) -> int:
    ledger, step, milliseconds = argv[1], argv[2], int(argv[3])
    code = int(argv[4]) if len(argv) > 4 else 0
    lock = hold_lock(ledger, step)
    append(ledger, step, "start")
    time.sleep(milliseconds / 1000)
    output = os.environ.get("RUNNER_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as file:
            file.write(f"out={step}<{os.environ.get('LEDGER_IN', '')}>\n")
    append(ledger, step, "end")
    os.close(lock)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
