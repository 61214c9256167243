"""The `sagebatch` command line's values and the stack lookup, without AWS: --param, --fit, --since, the stack name's
precedence, the CloudFormation outputs, and the figures `watch` shows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.messages import JobSpec
from sagebatch.tooling.cli_args import UsageProblem, describe_duration, parse_fit, parse_params, parse_since
from sagebatch.tooling.cli_jobs import submitted_job_id, upload_key
from sagebatch.tooling.cli_view import progress_figures
from sagebatch.tooling.stack_outputs import StackNotUsable, StackOutputs, read_stack_outputs, stack_ref
from sagebatch.usecases.intake import job_id_for

OUTPUTS = {
    "BucketName": "data-bucket",
    "IntakeQueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/intake",
    "WorkQueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/work",
    "FinalizeQueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/finalize",
    "DeadLetterQueueUrls": "https://sqs/intake-dlq,https://sqs/work-dlq,https://sqs/finalize-dlq",
    "TableName": "jobs-table",
}


# -- --param ---------------------------------------------------------------------------------------------
def test_param_values_are_json_when_they_parse_and_strings_otherwise():
    # Given numbers, a boolean and a list; When parsed; Then they keep their JSON types
    assert parse_params(["max_new_tokens=256", "temperature=0.7", "do_sample=true", 'stop=["a", "b"]']) == {
        "max_new_tokens": 256,
        "temperature": 0.7,
        "do_sample": True,
        "stop": ["a", "b"],
    }


def test_a_repeated_stop_adds_stop_sequences():
    # Given two plain-text stop values; When parsed; Then both are stop sequences
    assert parse_params(["stop=###", "stop=</s>"]) == {"stop": ["###", "</s>"]}


@pytest.mark.parametrize(
    "items, says",
    [
        (["max_new_tokens"], "--param takes KEY=VALUE"),
        (["=5"], "--param takes KEY=VALUE"),
        (["max_tokens=5"], "bad --param: max_tokens"),  # TGI's name is max_new_tokens
        (["top_k=lots"], "bad --param: top_k"),
        (["seed=1", "seed=2"], "--param seed is given twice"),
    ],
    ids=["no-equals", "no-key", "unknown-name", "wrong-type", "twice"],
)
def test_a_bad_param_is_a_usage_problem_naming_it(items, says):
    # Given a --param that cannot be a TGI parameter; When parsed; Then the problem names it
    with pytest.raises(UsageProblem, match=says):
        parse_params(items)


# -- --fit ---------------------------------------------------------------------------------------------
def test_fit_takes_comma_separated_settings_or_a_json_object():
    # Given the same settings both ways; When parsed; Then they are the same fit settings
    short = parse_fit("strategy=map_reduce, keep=tail, chunk_tokens=512")
    assert short == parse_fit('{"strategy": "map_reduce", "keep": "tail", "chunk_tokens": 512}')
    assert short is not None and (short["strategy"], short["keep"], short["chunk_tokens"]) == ("map_reduce", "tail", 512)
    assert parse_fit(None) is None


@pytest.mark.parametrize(
    "text, says",
    [
        ("strategy", "--fit takes KEY=VALUE"),
        ("strategy=magic", "bad --fit: strategy"),
        ("{oops", "JSON object"),
        ("chunk_tokens=8", "bad --fit: chunk_tokens"),
    ],
)
def test_a_bad_fit_is_a_usage_problem(text, says):
    with pytest.raises(UsageProblem, match=says):
        parse_fit(text)


# -- --since -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds_ago", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 7 * 86400), ("1w", 7 * 86400)])
def test_since_takes_a_duration_before_now(text, seconds_ago):
    assert parse_since(text, now=1_000_000.0) == 1_000_000.0 - seconds_ago


def test_since_takes_a_utc_date_or_a_time_with_its_offset():
    assert parse_since("2026-12-01", now=0) == 1796083200.0  # 2026-12-01T00:00:00Z
    assert parse_since("2026-12-01T01:00+01:00", now=0) == 1796083200.0
    assert parse_since(None, now=0) is None


def test_since_refuses_anything_else():
    with pytest.raises(UsageProblem, match="--since takes a duration"):
        parse_since("yesterday", now=0)


# -- the stack's name and outputs ----------------------------------------------------------------------
def samconfig(directory: Path, text: str) -> Path:
    (directory / "samconfig.toml").write_text(text, encoding="utf-8")
    return directory


def test_stack_flag_comes_before_the_environment_and_samconfig(tmp_path):
    # Given all three name a stack; When resolved; Then --stack wins
    directory = samconfig(tmp_path, '[default.deploy.parameters]\nstack_name = "from-file"\n')
    ref = stack_ref("from-flag", None, {"SAGEBATCH_STACK": "from-env"}, directory)
    assert (ref.name, ref.source) == ("from-flag", "--stack")


def test_the_environment_comes_before_samconfig(tmp_path):
    directory = samconfig(tmp_path, '[default.deploy.parameters]\nstack_name = "from-file"\n')
    assert stack_ref(None, None, {"SAGEBATCH_STACK": "from-env"}, directory).name == "from-env"


def test_samconfig_names_the_stack_and_its_region(tmp_path):
    # Given samconfig.toml as `sam deploy --guided` writes it (global and deploy parameters)
    directory = samconfig(
        tmp_path,
        'version = 0.1\n[default.global.parameters]\nstack_name = "global-name"\n'
        '[default.deploy.parameters]\nstack_name = "deployed"\nregion = "eu-west-1"\n',
    )

    # When resolved without --stack or SAGEBATCH_STACK; Then the deploy section's name and region are used,
    # and --region still wins over the file's region
    ref = stack_ref(None, None, {}, directory)
    assert (ref.name, ref.region, ref.source) == ("deployed", "eu-west-1", "samconfig.toml")
    assert stack_ref(None, "us-west-2", {}, directory).region == "us-west-2"


def test_no_stack_name_anywhere_is_a_clear_problem(tmp_path):
    with pytest.raises(StackNotUsable, match="no stack named: pass --stack NAME, set SAGEBATCH_STACK"):
        stack_ref(None, None, {}, tmp_path)


def test_an_unreadable_samconfig_is_a_clear_problem(tmp_path):
    with pytest.raises(StackNotUsable, match=r"cannot read .*samconfig\.toml"):
        stack_ref(None, None, {}, samconfig(tmp_path, "stack_name = \n"))


def test_stack_outputs_come_from_the_template_outputs():
    # Given a stack's outputs; When read; Then each resource is found, the DLQs by their order in the output
    outputs = StackOutputs.from_outputs("sb", "eu-west-1", OUTPUTS)
    assert (outputs.bucket, outputs.table, outputs.intake_queue_url) == ("data-bucket", "jobs-table", OUTPUTS["IntakeQueueUrl"])
    assert outputs.dlq_url("intake") == "https://sqs/intake-dlq"
    assert outputs.dlq_url("work") == "https://sqs/work-dlq"
    assert outputs.dlq_url("finalize") == "https://sqs/finalize-dlq"


def test_a_stack_without_the_outputs_is_not_usable():
    # Given a stack missing the table output; When read; Then the problem names what is missing
    with pytest.raises(StackNotUsable, match="stack other has no output TableName"):
        StackOutputs.from_outputs("other", None, {k: v for k, v in OUTPUTS.items() if k != "TableName"})


class FakeCloudFormation:
    """describe_stacks only: the stack `known` with OUTPUTS, any other name missing as CloudFormation says it."""

    class meta:
        region_name = "eu-west-1"

    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        if StackName != "known":
            raise ClientError(
                {"Error": {"Code": "ValidationError", "Message": f"Stack with id {StackName} does not exist"}}, "DescribeStacks"
            )
        return {"Stacks": [{"Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS.items()]}]}


def test_reading_a_stack_that_does_not_exist_names_it_and_the_region():
    ref = stack_ref("missing", None, {})
    with pytest.raises(StackNotUsable, match=r"no stack missing in eu-west-1 \(named by --stack\)"):
        read_stack_outputs(FakeCloudFormation(), ref)
    assert read_stack_outputs(FakeCloudFormation(), stack_ref("known", None, {})).region == "eu-west-1"


# -- submit's job id and upload key --------------------------------------------------------------------
def test_the_printed_job_id_is_the_one_intake_derives():
    # Given job messages with a job id, with a client token, and with neither
    spec = {"input": "s3://b/k"}

    # Then the id submit prints is the message's, else the token's, else the SQS message id's (usecases/intake.py)
    assert submitted_job_id(JobSpec.model_validate(spec | {"job_id": "mine"}), "m-1") == "mine"
    assert submitted_job_id(JobSpec.model_validate(spec | {"client_token": "t"}), "m-1") == job_id_for("token:t")
    assert submitted_job_id(JobSpec.model_validate(spec), "m-1") == job_id_for("msg:m-1")


def test_the_same_file_is_uploaded_to_the_same_key_outside_inputs(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "x.jsonl").write_bytes(b'{"prompt": "hi"}\n')
    (second / "x.jsonl").write_bytes(b'{"prompt": "hi"}\n')
    key = upload_key(first / "x.jsonl")
    assert key == upload_key(second / "x.jsonl") and key.startswith("uploads/") and key.endswith("/x.jsonl")


# -- watch's figures -----------------------------------------------------------------------------------
def test_watch_figures_rate_and_eta_come_from_the_progress_so_far():
    # Given a job 100 s in, with 250 of 1000 records done and 50,000 output tokens
    now = time.time()
    job = Job(
        job_id="j",
        source="s3://b/k",
        bucket="b",
        key="k",
        status=JobStatus.RUNNING,
        started_at=now - 100,
        total_records=1000,
        succeeded=240,
        failed=10,
        output_tokens=50_000,
        endpoint_calls=260,
    )

    # When the figures are taken
    figures = progress_figures(job, now)

    # Then 500 tokens/s, and 750 records to go at 2.5 a second: 300 s
    assert (figures.done, figures.failed, figures.total, figures.calls) == (250, 10, 1000, 260)
    assert figures.tokens_per_s == pytest.approx(500)
    assert figures.eta_s == pytest.approx(300)
    assert describe_duration(figures.eta_s) == "5m 00s" and describe_duration(None) == "-"


def test_watch_figures_of_a_job_not_started_have_no_rate_or_eta():
    figures = progress_figures(Job(job_id="j", source="", bucket="", key=""), time.time())
    assert (figures.done, figures.total, figures.tokens_per_s, figures.eta_s) == (0, None, None, None)
