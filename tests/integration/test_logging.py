"""Logs carry ids, sizes and timings, never prompt or output text."""

from __future__ import annotations

import logging

from tests.conftest import jsonl

SECRET_PROMPT = "the launch code is tangerine-4471"


def test_no_prompt_or_output_text_reaches_the_logs(stack, caplog):
    # Given a job whose prompt holds a distinctive string and one bad line, with every record at the deployed level
    # (INFO; botocore's own DEBUG wire logs would show request bodies, and are off unless someone turns them on)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="sagebatch")
    job_id = stack.drop_file(jsonl({"id": "s", "prompt": SECRET_PROMPT}, '{"prompt": "' + SECRET_PROMPT), "inputs/secret.jsonl")

    # When the job runs to the end
    stack.wait_for(job_id)
    output = stack.results(job_id)[0]["output"]

    # Then the logs (messages and every extra field) name the job, and contain neither the prompt nor the output
    logs = "\n".join(repr(vars(record)) for record in caplog.records)
    assert job_id in logs
    assert SECRET_PROMPT not in logs
    assert output and output not in logs
