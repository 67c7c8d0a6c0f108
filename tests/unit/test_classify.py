"""Classification of failed attempts: user rules, built-ins, the default."""

from __future__ import annotations

import pytest

from runner.policy.classify import (
    BUILTIN_RULES,
    TAIL_BYTES,
    Classification,
    Failure,
    classify,
)
from runner.spec.model import ClassifyRule, ErrorClass


def failed(stderr: str = "", stdout: str = "", exit_code: int = 1) -> Failure:
    """A process that exited with `exit_code` after writing this output."""
    return Failure(
        exit_code=exit_code,
        stdout_tail=stdout.encode(),
        stderr_tail=stderr.encode(),
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "curl: (7) Failed to connect to api port 443: Connection refused",
            "transient",
        ),
        ("curl: (56) Recv failure: Connection reset by peer", "transient"),
        ("curl: (28) Operation timed out after 30001 milliseconds", "transient"),
        ("curl: (6) Could not resolve host: api.example.com", "transient"),
        ("ping: connect: Network is unreachable", "transient"),
        ("ssh: connect to host db port 22: No route to host", "transient"),
        ("getaddrinfo: Temporary failure in name resolution", "transient"),
        ("Error: connect ECONNREFUSED 127.0.0.1:5432", "transient"),
        ("BrokenPipeError: [Errno 32] Broken pipe", "transient"),
        ("requests.exceptions.ReadTimeout: read timeout=10", "transient"),
        ("< HTTP/1.1 429 Too Many Requests", "intermittent"),
        ("curl: (22) The requested URL returned error: 429", "intermittent"),
        ("HTTP/2 503", "intermittent"),
        ("503 Service Unavailable", "intermittent"),
        ("ThrottlingException: Rate exceeded (status code: 400)", "intermittent"),
        ("403 Forbidden: API rate limit exceeded for user", "intermittent"),
        ("error: request was throttled, slow down", "intermittent"),
        ("< HTTP/1.1 403 Forbidden", "permanent"),
        ("curl: (22) The requested URL returned error: 404", "permanent"),
        ("404 Client Error: Not Found for url: https://x/y", "permanent"),
        ("401 Unauthorized", "permanent"),
        ("error: the token is not authorised", "permanent"),
        ('{"statusCode": 400, "message": "bad"}', "permanent"),
        ("HTTP/1.1 400 Bad Request", "permanent"),
        ("ValueError: invalid argument: --days=-1", "permanent"),
        ("git@github.com: Permission denied (publickey).", "permanent"),
        ("cat: stale.txt: No such file or directory", "permanent"),
        ("fatal: repository 'https://x/y.git/' not found", "permanent"),
        ("An error occurred (AccessDenied): Access Denied", "permanent"),
    ],
)
def test_builtin_signatures(message: str, expected: ErrorClass) -> None:
    """Real-looking messages on stderr get the class SPEC section 3 gives them."""
    assert classify(failed(message), ()).error_class == expected


@pytest.mark.parametrize(
    "message",
    ["copied 404 files", "took 400 ms", "processed 503 rows", "job 401 finished"],
)
def test_bare_numbers_are_not_http_statuses(message: str) -> None:
    """A status number without an HTTP word beside it matches nothing."""
    assert classify(failed(message), ()) == Classification(
        "intermittent", "default: no rule matched"
    )


def test_retryable_signature_beats_permanent_one() -> None:
    """A tail with both a transient and a permanent signature is transient."""
    message = "attempt 1: connection refused\nattempt 2: 404 Not Found\n"

    assert classify(failed(message), ()).error_class == "transient"


def test_nothing_matches_means_intermittent() -> None:
    """A failure no rule recognises is intermittent, and says so."""
    result = classify(failed("something odd happened"), ())

    assert result == Classification("intermittent", "default: no rule matched")


def test_exit_75_is_transient() -> None:
    """EX_TEMPFAIL is transient, named in the description."""
    result = classify(failed(exit_code=75), ())

    assert result == Classification("transient", "builtin: exit code 75 (EX_TEMPFAIL)")


@pytest.mark.parametrize("exit_code", [126, 127])
def test_shell_cannot_start_command(exit_code: int) -> None:
    """The shell's exits 126 and 127 mean the command cannot start: permanent."""
    result = classify(failed("sh: 1: nosuch: not found", exit_code=exit_code), ())

    assert result.error_class == "permanent"
    assert result.rule.startswith(f"builtin: exit code {exit_code}")


def test_spawn_error_is_permanent() -> None:
    """An argv command that cannot be started is permanent, with the reason."""
    failure = Failure(spawn_error="No such file or directory: 'nosuch'")

    result = classify(failure, ())

    assert result == Classification(
        "permanent",
        "builtin: command could not be started (No such file or directory: 'nosuch')",
    )


def test_spawn_error_matches_exit_127_rules() -> None:
    """A user rule on exit 127 covers argv commands that cannot start too."""
    rule = ClassifyRule("transient", exit_codes=frozenset({127}), origin="classify[0]")

    result = classify(Failure(spawn_error="ENOENT"), (rule,))

    assert result.error_class == "transient"


def test_timeout_is_transient_even_with_permanent_output() -> None:
    """A timed-out attempt is transient although its output says otherwise."""
    failure = Failure(signal="SIGTERM", timed_out=True, stderr_tail=b"403 Forbidden")

    assert classify(failure, ()) == Classification("transient", "builtin: timed out")


def test_rule_can_override_timeout() -> None:
    """A rule with `timeout: true` decides the class of timed-out attempts."""
    rule = ClassifyRule("permanent", timeout=True, origin="steps.load.classify[0]")
    failure = Failure(signal="SIGTERM", timed_out=True)

    result = classify(failure, (rule,))

    assert result == Classification("permanent", "steps.load.classify[0]: timed out")


def test_user_rule_beats_builtin() -> None:
    """The step's rules come before the built-ins: first match wins."""
    rule = ClassifyRule(
        "intermittent", pattern="quota exceeded", origin="steps.fetch.classify[0]"
    )
    message = "403 Forbidden: quota exceeded"

    result = classify(failed(message), (rule,))

    assert result == Classification(
        "intermittent",
        "steps.fetch.classify[0]: pattern matched 'quota exceeded' in stderr",
    )


def test_first_user_rule_wins() -> None:
    """Of two matching rules the earlier one (the step's) decides."""
    step_rule = ClassifyRule("permanent", exit_codes=frozenset({3}), origin="step")
    workflow_rule = ClassifyRule("transient", exit_codes=frozenset({3}), origin="wf")

    result = classify(failed(exit_code=3), (step_rule, workflow_rule))

    assert result == Classification("permanent", "step: exit code 3")


def test_rule_matches_signal() -> None:
    """A rule naming a signal matches attempts ended by that signal."""
    rule = ClassifyRule("transient", signals=frozenset({"SIGKILL"}), origin="r")
    failure = Failure(signal="SIGKILL")

    assert classify(failure, (rule,)) == Classification(
        "transient", "r: signal SIGKILL"
    )


def test_rule_matches_any_condition() -> None:
    """A rule whose exit code does not match still matches on its pattern."""
    rule = ClassifyRule(
        "permanent", exit_codes=frozenset({9}), pattern="schema mismatch", origin="r"
    )

    assert classify(failed("schema mismatch", exit_code=1), (rule,)).rule == (
        "r: pattern matched 'schema mismatch' in stderr"
    )


def test_user_pattern_is_case_sensitive_by_default() -> None:
    """User patterns match case as written unless the rule ignores case."""
    strict = ClassifyRule("permanent", pattern="Quota", origin="strict")
    loose = ClassifyRule("transient", pattern="Quota", ignore_case=True, origin="loose")

    result = classify(failed("QUOTA reached"), (strict, loose))

    assert result.rule == "loose: pattern matched 'QUOTA' in stderr"


def test_pattern_searches_stdout_too() -> None:
    """Patterns search stdout as well as stderr, and name the stream."""
    result = classify(failed(stdout="HTTP/1.1 404 Not Found"), ())

    assert result.error_class == "permanent"
    assert result.rule.endswith("in stdout")


def test_only_the_tail_is_searched() -> None:
    """A signature further back than the last 64 KiB is not seen."""
    old = "connection refused\n" + "x" * TAIL_BYTES

    assert classify(failed(old), ()).error_class == "intermittent"
    assert classify(failed(old + "Forbidden"), ()).error_class == "permanent"


def test_undecodable_tail_is_still_searched() -> None:
    """Bytes that are not UTF-8, or a character cut in half, do not hide a match."""
    tail = "é".encode()[1:] + b"\xff\xfe garbage\n" + b"Connection refused\n"
    failure = Failure(exit_code=1, stderr_tail=tail)

    assert classify(failure, ()).error_class == "transient"


def test_rule_without_origin_is_still_described() -> None:
    """A rule built without an origin is still named in the description."""
    rule = ClassifyRule("permanent", exit_codes=frozenset({2}))

    assert classify(failed(exit_code=2), (rule,)).rule == "rule: exit code 2"


def test_builtin_rules_compile_and_are_ordered() -> None:
    """Built-ins start with the facts about the attempt, then the signatures."""
    classes = [rule.error_class for rule in BUILTIN_RULES]

    assert classes == [
        "permanent",
        "transient",
        "transient",
        "intermittent",
        "transient",
        "permanent",
    ]
    assert all(rule.origin == "builtin" for rule in BUILTIN_RULES)
