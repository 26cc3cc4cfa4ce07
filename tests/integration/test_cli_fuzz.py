"""The ``worker-bridge`` command under random arguments, on the real test database.

The CLI's contract (cli.py, README): exit code 0, 1 (one line on stderr starting with
``worker-bridge:``) or 2 (argparse usage error), and never a traceback. Hypothesis feeds
``main(argv)`` in-process with structured commands whose values come from a vocabulary of
nasty ones (and random text), and with plain random word lists; a few real subprocesses
check the same with arguments only an OS can pass (bytes that are not UTF-8). ``demo`` is
kept out of every vocabulary: it starts a worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from worker_bridge.bridge import BridgeApp, get_bridge
from worker_bridge.cli import main

# See test_properties.py: libcst's import warning would hide a failing example.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str


Run = Callable[[list[str]], Result]


def check_contract(result: Result) -> None:
    """Exit code 0, 1 or 2; no traceback anywhere; exit 1 is exactly one prefixed line."""
    where = f"argv={result.argv!r:.300} code={result.code} err={result.err[:600]!r}"
    assert result.code in (0, 1, 2), where
    assert "Traceback" not in result.err and "Traceback (most recent" not in result.out, where
    if result.code == 1:
        assert result.err.endswith("\n") and result.err.count("\n") == 1, where
        assert result.err.startswith("worker-bridge: "), where
    elif result.code == 2:
        assert "usage: worker-bridge" in result.err, where
    else:
        assert result.err == "", where


@pytest.fixture
def run(
    bridge: BridgeApp,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """``worker-bridge ARGV`` in-process on the test database; SystemExit becomes the code."""
    monkeypatch.setenv("WORKER_BRIDGE_DATABASE_URL", database_url)
    assert get_bridge() is bridge

    def call(argv: list[str]) -> Result:
        capsys.readouterr()
        try:
            code: int | str | None = main(list(argv))
        except SystemExit as exited:
            code = exited.code
        captured = capsys.readouterr()
        return Result(list(argv), code if isinstance(code, int) else -1, captured.out, captured.err)

    return call


# --- vocabularies -----------------------------------------------------------------------------

SQL_LIKE = ["'; DROP TABLE worker_jobs; --", "' OR '1'='1", "%s", ":type", "echo'--"]
TYPES = ["echo", "fail", "noop", "broken_import", "nope", "", "echo.run", "__init__", *SQL_LIKE]
INTS = [
    "0", "1", "-1", "7", "2147483647", "2147483648", "-2147483648", "-2147483649",
    "9223372036854775807", "9223372036854775808", "1e3", "0x10", " 1", "1_000", "\u0661",
    "\uff11", "+5", "--1", "", "NaN", "9" * 5000,
]  # fmt: skip
DATA = [
    "{}", '{"a": 1}', '{"a": [1, 2.5, "x", null, true]}', "[1]", '"str"', "null", "1",
    '{"a": NaN}', '{"a": Infinity}', '{"a": 1e400}', '{"a": "\\u0000"}', '{"a": "\\ud800"}',
    '{"a": "\\ud83d\\ude00"}', '{"\\u202e": "rtl"}', '{"a": 1e16}', "{bad", "{'a': 1}",
    "[" * 100_000, '{"a":' * 300 + "1" + "}" * 300, '{"n": 1' + "0" * 5000 + "}",
    '{"s": "' + "x" * (1024 * 1024) + '"}', '{"q": "\'; DROP TABLE worker_jobs; --"}',
]  # fmt: skip
DUES = [
    "2030-01-01T00:00:00Z", "2030-01-01T00:00:00+02:00", "2030-01-01T00:00:00", "2030-01-01",
    "1970-01-01T00:00:00+00:00", "2030-02-30T00:00:00Z", "yesterday", "",
    "2030-01-01T00:00:00+24:00", "2030-01-01T00:00:00.123456789Z",
    # the edges of the datetime range, last
    "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59+00:00",
]  # fmt: skip
CRONS = [
    "* * * * *", "*/3 * * * * *", "@daily", "@reboot", "0 0 30 2 *", "61 * * * *", "",
    "* * * * * * *", "L * * * *", "*/0 * * * *", "'; DROP TABLE worker_jobs; --",
    "0 0 1 1 *", "59 23 31 12 *", "0 0 29 2 *",
]  # fmt: skip
STATUSES = ["pending", "dispatched", "running", "succeeded", "failed", "cancelled", "PENDING", ""]
FLAGS = [
    "--json", "--type", "--user", "--status", "--limit", "--data", "--due", "--cron",
    "--retry-delay", "--remove-delay", "-h", "--help", "--js", "--us", "-", "--", "--seconds",
]  # fmt: skip
COMMANDS = ["db", "upgrade", "schedule", "jobs", "show", "cancel", "stats"]

# Arguments as the OS can pass them: no NUL, no lone surrogate outside surrogateescape (those
# are the subprocess tests' business, since capsys cannot hold them).
argument_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
)


def _values(vocabulary: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(vocabulary), argument_text)


def _options(choices: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    pair = st.sampled_from(sorted(choices)).flatmap(
        lambda flag: choices[flag].map(lambda value: [flag, value])
    )
    return st.lists(pair, max_size=4).map(lambda pairs: [word for p in pairs for word in p])


json_flag = st.sampled_from([[], [], ["--json"]])
ints = _values(INTS)
schedule_argv = st.builds(
    lambda pre, job_type, options, post: [*pre, "schedule", job_type, *options, *post],
    json_flag,
    _values(TYPES),
    _options(
        {
            "--user": ints,
            "--data": _values(DATA),
            "--due": _values(DUES),
            "--cron": _values(CRONS),
            "--retry-delay": ints,
            "--remove-delay": ints,
        }
    ),
    json_flag,
)


# Well-formed up to the values: a known type and a valid user, so that the values of the
# other options reach the validators and the database rather than argparse.
def _optional(flag: str, values: list[str]) -> st.SearchStrategy[list[str]]:
    """Nothing, or ``flag`` with a value; the range's edges (the last three) come up often."""
    picked = st.one_of(st.sampled_from(values), st.sampled_from(values[-3:]))
    return st.one_of(st.just([]), picked.map(lambda value: [flag, value]))


well_formed_schedule_argv = st.builds(
    lambda pre, job_type, user, data, due, cron, retry: [
        *pre, "schedule", job_type, "--user", user, *data, *due, *cron, *retry
    ],
    json_flag,
    st.sampled_from(["echo", "noop", "fail"]),
    st.sampled_from(["0", "1", "-1", "2147483647"]),
    _optional("--data", DATA),
    _optional("--due", DUES),
    _optional("--cron", CRONS),
    _optional("--retry-delay", INTS),
)  # fmt: skip
jobs_argv = st.builds(
    lambda pre, options, post: [*pre, "jobs", *options, *post],
    json_flag,
    _options(
        {"--type": _values(TYPES), "--user": ints, "--status": _values(STATUSES), "--limit": ints}
    ),
    json_flag,
)
id_argv = st.builds(
    lambda pre, command, value, post: [*pre, command, value, *post],
    json_flag,
    st.sampled_from(["show", "cancel"]),
    ints,
    json_flag,
)
simple_argv = st.sampled_from(
    [["stats"], ["--json", "stats"], ["stats", "--json"], ["db", "upgrade"], ["db"], []]
)
random_argv = st.lists(
    st.one_of(
        st.sampled_from(COMMANDS + FLAGS + TYPES + INTS[:12] + DUES[:6] + CRONS[:4]),
        argument_text,
    ),
    max_size=7,
)
argvs = st.one_of(
    well_formed_schedule_argv,
    well_formed_schedule_argv,
    schedule_argv,
    jobs_argv,
    id_argv,
    simple_argv,
    random_argv,
)


def _no_demo(argv: list[str]) -> bool:
    return "demo" not in argv


# --- in-process -------------------------------------------------------------------------------


@FUZZ
@given(argv=argvs.filter(_no_demo))
def test_random_arguments_keep_the_exit_code_contract(run: Run, argv: list[str]) -> None:
    """Whatever the arguments: exit 0, 1 or 2, never a traceback; exit 1 prints exactly one
    line starting with 'worker-bridge:'; exit 2 prints the usage; exit 0 prints nothing on
    stderr, and with --json prints valid JSON."""
    result = run(argv)
    check_contract(result)
    if result.code == 0 and "--json" in argv and not {"-h", "--help"} & set(argv):
        json.loads(result.out)


@FUZZ
@given(argv=argvs.filter(_no_demo))
def test_no_arguments_reach_the_catch_all(run: Run, argv: list[str]) -> None:
    """main()'s last-resort handler ('unexpected <ExceptionType>') is for bugs: every bad
    argument must be named by a real check instead (a date out of range, a cron search past
    year 9999...)."""
    result = run(argv)
    assert "worker-bridge: unexpected " not in result.err, (argv, result.err)


def test_the_vocabulary_reaches_every_outcome(run: Run) -> None:
    """The fuzzing vocabulary is not toothless: it produces successes, one-line errors from
    the database layer and the validators, and usage errors."""
    assert run(["--json", "schedule", "echo", "--user", "1", "--data", '{"a": [1]}']).code == 0
    assert run(["schedule", "'; DROP TABLE worker_jobs; --", "--user", "1"]).code == 1
    assert run(["schedule", "echo", "--user", "1", "--data", '{"a": NaN}']).code == 1
    assert run(["schedule", "echo", "--user", "1", "--cron", "L * * * *"]).code == 1
    assert run(["jobs", "--limit", "0"]).code == 2
    assert run(["show", "9223372036854775808"]).code == 2
    listed = run(["--json", "jobs", "--type", "echo"])
    assert listed.code == 0 and len(json.loads(listed.out)) == 1


# --- real processes ---------------------------------------------------------------------------


def run_process(database_url: str, *args: str | bytes) -> Result:
    """``python -m worker_bridge.cli ARGS``; bytes arguments reach it undecoded."""
    completed = subprocess.run(
        [sys.executable, "-m", "worker_bridge.cli", *args],
        cwd=ROOT,
        env={**os.environ, "WORKER_BRIDGE_DATABASE_URL": database_url},
        capture_output=True,
        timeout=120,
        check=False,
    )
    return Result(
        [str(a) for a in args],
        completed.returncode,
        completed.stdout.decode("utf-8", "backslashreplace"),
        completed.stderr.decode("utf-8", "backslashreplace"),
    )


PROCESS_CASES: list[tuple[str, list[str | bytes], int]] = [
    ("type not UTF-8", ["jobs", "--type", b"\xff\xfe"], 1),
    ("job type not UTF-8", ["schedule", b"ech\xff", "--user", "1"], 1),
    ("data not UTF-8", ["schedule", "echo", "--user", "1", "--data", b'{"a": "\xff"}'], 1),
    ("cron not UTF-8", ["schedule", "echo", "--user", "1", "--cron", b"\xff * * * *"], 1),
    (
        "due overflows UTC",
        ["schedule", "echo", "--user", "1", "--due", "9999-12-31T23:59:59-05:00"],
        1,
    ),
    ("sql as type", ["jobs", "--type", "'; DROP TABLE worker_jobs; --"], 0),
    ("huge id", ["show", "9" * 5000], 2),
    ("json stats", ["--json", "stats"], 0),
]


@pytest.mark.parametrize(
    ("args", "code"), [c[1:] for c in PROCESS_CASES], ids=[c[0] for c in PROCESS_CASES]
)
def test_real_processes_keep_the_contract(
    bridge: BridgeApp, database_url: str, args: list[str | bytes], code: int
) -> None:
    """A real process (real argv decoding, real stderr) keeps the contract too, with the
    expected exit code; the table survives SQL-looking arguments."""
    result = run_process(database_url, *args)
    check_contract(result)
    assert result.code == code, result
    if result.code == 0 and "--json" in args:
        json.loads(result.out)
    if "sql" in str(args):
        assert run_process(database_url, "stats").code == 0  # worker_jobs is still there


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "--type", b"\xff\xfe"],
        ["schedule", "echo", "--user", "1", "--due", "9999-12-31T23:59:59-05:00"],
        ["schedule", "echo", "--user", "1", "--cron", "0 0 1 1 *", "--due", "9999-12-31T23:00Z"],
    ],
    ids=["type not UTF-8", "due overflows UTC", "cron past year 9999"],
)
def test_real_processes_name_the_bad_argument(
    bridge: BridgeApp, database_url: str, args: list[str | bytes]
) -> None:
    """Each of these is bad input, and must be reported as such (exit 1, a message about
    the argument), not through the catch-all 'unexpected <ExceptionType>'."""
    result = run_process(database_url, *args)
    assert result.code == 1, result
    assert "worker-bridge: unexpected " not in result.err, result.err
