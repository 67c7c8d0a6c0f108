"""Give each failed attempt its error class (SPEC section 3).

Rules are tried in order and the first match wins: the step's rules, then the
workflow's (the caller passes both, already concatenated, as `Step.classify`
does), then `BUILTIN_RULES`. A failure no rule matches is `intermittent`.

The built-in rules run in this order, and the order is deliberate:

1. A command that cannot be started is permanent: the runner's spawn error, or
   the shell's exit 126 (not executable) and 127 (not found).
2. The runner's own timeout, then exit 75 (EX_TEMPFAIL), are transient. These
   are facts about the attempt, so they beat guesses read from its output.
3. Output signatures: intermittent first, then transient, then permanent.
   Throttling is often reported under a 4xx status (GitHub answers a rate limit
   with 403, AWS throttling comes back as 400), so its words must beat the
   status numbers. And when one tail holds both a retryable and a permanent
   signature (a retry loop that printed "connection refused" before it gave up
   with "not found"), the retryable reading wins because its mistakes are
   cheaper: a wrong transient spends the remaining attempts and then waits for
   redrive, a wrong permanent retries nothing and compensates the whole run.

Choices among the signatures:

- "Could not resolve host" (curl) and "temporary failure in name resolution"
  are transient: a DNS blip is more common than a misspelled host, and a
  misspelled host only costs its retries.
- "Broken pipe" is transient: a peer that went away mid-write, like a reset.
- HTTP status numbers count only beside an HTTP word (`HTTP/1.1 404`,
  `error: 404`, `status code 403`, `"statusCode": 429`), never bare, because
  "copied 404 files" is no HTTP answer. Reason phrases ("Not Found", "Too Many
  Requests") count anywhere.
- A spawn error is matched as exit code 127, so a rule for exit 127 covers an
  argv command that does not exist as well as a shell command that does not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from runner.spec.model import ClassifyRule, ErrorClass

TAIL_BYTES = 64 * 1024
"""How much of the end of each stream the patterns see."""

BUILTIN_ORIGIN = "builtin"
SPAWN_EXIT_CODE = 127
EXIT_CODE_NAMES = {
    75: "EX_TEMPFAIL",
    126: "command not executable",
    127: "command not found",
}
_EXCERPT_CHARS = 80


@dataclass(frozen=True)
class Failure:
    """What is known about one failed attempt."""

    exit_code: int | None = None
    signal: str | None = None
    """The name of the signal that ended the process, like `SIGKILL`."""
    timed_out: bool = False
    spawn_error: str | None = None
    """Why the command could not be started; it then has no exit code."""
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""


@dataclass(frozen=True)
class Classification:
    error_class: ErrorClass
    rule: str
    """Which rule matched and why, for `status` and the event log."""


def _http_status(*codes: int) -> str:
    """A regex for these status codes written beside an HTTP word."""
    context = r"\bHTTP/\d(?:\.\d)?|\bstatus(?:[ _-]?code)?|\berror|\bcode|\bresponse"
    numbers = "|".join(str(code) for code in codes)
    return rf"(?:{context}|\breturned)\W{{0,3}}(?:{numbers})\b"


def _signatures(error_class: ErrorClass, *patterns: str) -> ClassifyRule:
    """One case-insensitive built-in rule matching any of `patterns`."""
    return ClassifyRule(
        error_class,
        pattern="|".join(f"(?:{pattern})" for pattern in patterns),
        ignore_case=True,
        origin=BUILTIN_ORIGIN,
    )


BUILTIN_RULES: tuple[ClassifyRule, ...] = (
    ClassifyRule("permanent", exit_codes=frozenset({126, 127}), origin=BUILTIN_ORIGIN),
    ClassifyRule("transient", timeout=True, origin=BUILTIN_ORIGIN),
    ClassifyRule("transient", exit_codes=frozenset({75}), origin=BUILTIN_ORIGIN),
    _signatures(
        "intermittent",
        r"\brate[ _-]?limit",
        r"too many requests",
        r"throttl",
        r"service unavailable",
        _http_status(429, 503),
    ),
    _signatures(
        "transient",
        r"\btimed?[ _-]?out\b",
        r"connection (?:refused|reset|aborted)",
        r"network (?:is )?unreachable",
        r"no route to host",
        r"temporar(?:y|ily)",
        r"\bE(?:TIMEDOUT|CONNREFUSED|CONNRESET|NETUNREACH|HOSTUNREACH|AI_AGAIN)\b",
        r"broken pipe",
        r"could not resolve host",
    ),
    _signatures(
        "permanent",
        r"not found",
        r"forbidden",
        r"(?:un|not )authori[sz]ed",
        r"access denied",
        r"bad request",
        r"invalid (?:input|argument|parameter)",
        r"permission denied",
        r"no such file",
        _http_status(400, 401, 403, 404),
    ),
)


def classify(failure: Failure, rules: Sequence[ClassifyRule]) -> Classification:
    """The class of `failure`: the first of `rules`, then the built-ins, to match."""
    streams = _streams(failure)

    for rule in (*rules, *BUILTIN_RULES):
        reason = _match(rule, failure, streams)
        if reason is not None:
            return Classification(
                rule.error_class, f"{rule.origin or 'rule'}: {reason}"
            )

    return Classification("intermittent", "default: no rule matched")


def _streams(failure: Failure) -> tuple[tuple[str, str], ...]:
    """The decoded tails the patterns search, stderr first as errors go there."""
    return (
        ("stderr", _decode_tail(failure.stderr_tail)),
        ("stdout", _decode_tail(failure.stdout_tail)),
    )


def _decode_tail(output: bytes) -> str:
    # A cut through a multi-byte character, or output that is not UTF-8 at
    # all, must still be searchable rather than fail the classification.
    return output[-TAIL_BYTES:].decode("utf-8", errors="backslashreplace")


def _match(
    rule: ClassifyRule, failure: Failure, streams: tuple[tuple[str, str], ...]
) -> str | None:
    """Why `rule` matches `failure`, or None when none of its conditions does."""
    exit_code = failure.exit_code
    if failure.spawn_error is not None and exit_code is None:
        exit_code = SPAWN_EXIT_CODE

    if exit_code is not None and exit_code in rule.exit_codes:
        return _describe_exit(exit_code, failure.spawn_error)
    if failure.signal is not None and failure.signal in rule.signals:
        return f"signal {failure.signal}"
    if rule.timeout and failure.timed_out:
        return "timed out"
    if rule.pattern is not None:
        return _search(_compiled(rule.pattern, rule.ignore_case), streams)

    return None


def _describe_exit(exit_code: int, spawn_error: str | None) -> str:
    if spawn_error is not None:
        return f"command could not be started ({spawn_error})"

    name = EXIT_CODE_NAMES.get(exit_code)
    return f"exit code {exit_code}" + (f" ({name})" if name else "")


def _search(
    pattern: re.Pattern[str], streams: tuple[tuple[str, str], ...]
) -> str | None:
    """Where `pattern` is found, quoting the text it matched."""
    for stream, text in streams:
        found = pattern.search(text)
        if found is not None:
            excerpt = found.group()[:_EXCERPT_CHARS]
            return f"pattern matched {excerpt!r} in {stream}"

    return None


@lru_cache(maxsize=1024)
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    # Every failure runs every pattern; compile each one once per process.
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
