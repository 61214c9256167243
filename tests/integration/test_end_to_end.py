"""End to end through the local stack: S3 drop or SQS job in, results.jsonl + manifest.json out."""

from __future__ import annotations

import json

from tests.conftest import ROOT, jsonl


def test_s3_drop_of_the_examples_yields_one_result_per_line_in_order(stack):
    # Given the example prompts dropped under inputs/
    data = (ROOT / "examples" / "prompts.jsonl").read_bytes()
    lines = [json.loads(line) for line in data.splitlines()]
    job_id = stack.drop_file(data, "inputs/prompts.jsonl")

    # When the stack runs the job to the end
    status = stack.wait_for(job_id)

    # Then every input line has exactly one result line, in input order, all succeeded
    assert status == "COMPLETED"
    results = stack.results(job_id)
    assert [r["line"] for r in results] == list(range(1, len(lines) + 1))
    assert [r["id"] for r in results] == [rec.get("id", n) for n, rec in enumerate(lines, start=1)]
    assert all(r["status"] == "succeeded" and r["output"] and r["error"] is None for r in results)
    assert all(r["usage"]["input_tokens"] > 0 and r["usage"]["output_tokens"] > 0 for r in results)


def test_manifest_counts_match_the_results(stack):
    # Given a job of three prompts, one malformed
    job_id = stack.drop_file(jsonl({"prompt": "a"}, "{not json", {"prompt": "b"}), "inputs/three.jsonl")

    # When it completes
    stack.wait_for(job_id)

    # Then the manifest's counts and token totals add up to the result lines
    manifest, results = stack.manifest(job_id), stack.results(job_id)
    assert manifest["status"] == "COMPLETED"
    assert manifest["counts"] == {"total": 3, "succeeded": 2, "failed": 1}
    assert manifest["tokens"]["input"] == sum(r["usage"]["input_tokens"] for r in results)
    assert manifest["tokens"]["output"] == sum(r["usage"]["output_tokens"] for r in results)
    assert manifest["timings"]["finished_at"] >= manifest["timings"]["started_at"]


def test_a_malformed_line_fails_alone_with_a_reason(stack):
    # Given a file whose second line is not JSON
    job_id = stack.drop_file(
        jsonl({"id": "a", "prompt": "hello"}, '{"prompt": "unterminated', {"id": "c", "prompt": "bye"}), "inputs/bad-line.jsonl"
    )

    # When the job runs
    stack.wait_for(job_id)

    # Then the good lines succeed and the bad one is a failed line with a reason
    results = stack.results(job_id)
    assert [r["status"] for r in results] == ["succeeded", "failed", "succeeded"]
    assert results[1]["error"]["type"] == "invalid_json"
    assert "not valid JSON" in results[1]["error"]["message"]
    assert results[1]["id"] == 2  # no id in the line: it defaults to the line number


def test_a_key_with_spaces_plus_and_unicode_is_processed(stack):
    # Given a drop at inputs/my prompts ü+1.jsonl (S3 URL-encodes it in the notification)
    job_id = stack.drop_file(jsonl({"prompt": "hi"}, {"prompt": "there"}), "inputs/my prompts ü+1.jsonl")

    # When the job runs
    status = stack.wait_for(job_id)

    # Then it completes and the manifest names the decoded key
    assert status == "COMPLETED"
    assert stack.manifest(job_id)["input"].endswith("/inputs/my prompts ü+1.jsonl")
    assert len(stack.results(job_id)) == 2


def test_the_same_s3_notification_twice_makes_one_job(stack):
    # Given a dropped file whose notification is delivered twice (at-least-once delivery)
    import boto3

    sqs = boto3.client("sqs")
    job_id = stack.drop_file(jsonl({"prompt": "once"}), "inputs/dup.jsonl")
    queue = stack.stack.queue_url("IntakeQueue")
    notification = next(
        m for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"] if "ObjectCreated" in m["Body"]
    )
    sqs.send_message(QueueUrl=queue, MessageBody=notification["Body"])
    sqs.send_message(QueueUrl=queue, MessageBody=notification["Body"])
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=notification["ReceiptHandle"])

    # When everything drains
    stack.drain()

    # Then there is one job with one result, and the endpoint was called once
    assert stack.jobs.get_job(job_id).status == "COMPLETED"
    assert len(stack.results(job_id)) == 1
    assert stack.stack.emulator_server.emulator.stats.succeeded == 1
    jobs = stack.jobs_in_table()
    assert jobs == [job_id]


def test_job_submission_with_inline_records(stack):
    # Given a job message with inline records and job defaults
    stack.submit_job(
        {
            "job_id": "inline-1",
            "records": [{"prompt": "one"}, {"messages": [{"role": "user", "content": "two"}]}],
            "parameters": {"max_new_tokens": 5},
        }
    )

    # When it runs
    status = stack.wait_for("inline-1")

    # Then both records come back and the job default max_new_tokens applied
    assert status == "COMPLETED"
    results = stack.results("inline-1")
    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    assert all(r["usage"]["output_tokens"] <= 5 for r in results)
    assert stack.manifest("inline-1")["parameters"] == {"max_new_tokens": 5}


def test_job_submission_pointing_at_an_s3_object(stack):
    # Given an object outside inputs/ and a job message naming it
    import boto3

    boto3.client("s3").put_object(
        Bucket=stack.stack.bucket, Key="staging/batch.jsonl", Body=jsonl({"prompt": "x"}, {"prompt": "y"})
    )
    stack.submit_job({"input": f"s3://{stack.stack.bucket}/staging/batch.jsonl", "client_token": "tok-1"})
    stack.submit_job({"input": f"s3://{stack.stack.bucket}/staging/batch.jsonl", "client_token": "tok-1"})

    # When it runs
    stack.drain()

    # Then the repeated client_token made one job
    assert stack.jobs_in_table() and len(stack.jobs_in_table()) == 1
    job_id = stack.jobs_in_table()[0]
    assert [r["status"] for r in stack.results(job_id)] == ["succeeded", "succeeded"]


def test_an_invalid_job_message_becomes_a_failed_job_with_a_reason(stack):
    # Given a job message with neither input nor records
    stack.submit_job({"job_id": "broken", "parameters": {"max_new_tokens": 5}})

    # When intake handles it
    status = stack.wait_for("broken")

    # Then the job failed and says why
    assert status == "FAILED"
    assert "exactly one of 'input'" in stack.manifest("broken")["error"]


def test_an_empty_file_completes_with_zero_records(stack):
    # Given an empty input file
    job_id = stack.drop_file(b"", "inputs/empty.jsonl")

    # When it runs
    status = stack.wait_for(job_id)

    # Then the job completes with an empty results file
    assert status == "COMPLETED"
    assert stack.results(job_id) == []
    assert stack.manifest(job_id)["counts"]["total"] == 0
