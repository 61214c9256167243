"""A user's mistake on the command line gets one clear sentence and exit code 2, never a traceback, and is caught
before any work starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sagebatch.tooling import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prompts.jsonl"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, sentence",
    [
        (["run", "/no/such/file.jsonl"], "does not exist"),
        (["run", "/tmp"], "is a directory"),
        (["run", str(EXAMPLE), "--timeout", "-5"], "--timeout must be a positive number of seconds"),
        (["run", str(EXAMPLE), "--timeout", "0"], "--timeout must be a positive number of seconds"),
        (["cancel", "JOB", "--queue-url", "not-a-url"], "is not an SQS queue URL"),
        (["retry", "JOB", "--queue-url", "https://example.com/q"], "is not an SQS queue URL"),
        (["redrive", "--queue-url", "nope"], "is not an SQS queue URL"),
    ],
    ids=[
        "missing-file",
        "directory",
        "negative-timeout",
        "zero-timeout",
        "cancel-queue-url",
        "retry-queue-url",
        "redrive-queue-url",
    ],
)
def test_a_usage_mistake_is_one_sentence_and_exit_2(args: list[str], sentence: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a command line with a mistake; When sagebatch runs it
    code, err = run_cli(args, capsys)
    # Then it exits 2 with one line naming the problem, and no traceback
    assert code == 2
    assert sentence in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_out_path_that_is_a_file_is_refused_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given --out naming an existing file
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    # When `run` is asked to write there
    code, err = run_cli(["run", str(EXAMPLE), "--out", str(target)], capsys)
    # Then it is refused at once (exit 2, one sentence) and the file is untouched
    assert code == 2 and "is an existing file, not a directory" in err
    assert target.read_text() == "keep me"


def test_an_out_path_that_cannot_be_created_is_refused_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given --out under a regular file (no directory can be made there)
    blocker = tmp_path / "file"
    blocker.write_text("")
    # When `run` is asked to write there; Then it is refused with the reason
    code, err = run_cli(["run", str(EXAMPLE), "--out", str(blocker / "out")], capsys)
    assert code == 2 and "cannot be created" in err and "Traceback" not in err


def test_an_emulator_port_in_use_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a port some other program listens on
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # When the emulator is asked to serve on it
        code, err = run_cli(["emulator", "--port", str(port)], capsys)
    # Then it exits 2 saying the port is in use
    assert code == 2 and f"port {port} is in use" in err and "Traceback" not in err
