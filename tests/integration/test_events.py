"""The sample events in events/ (what `sam local invoke <Function> -e events/<file>.json` gets), run through
each function's real handler against the local stack.

Every file in events/ is picked up by its name, `<function>-<what>.json`, where <function> is intake, worker
or finalizer (IntakeFunction, WorkerFunction, FinalizerFunction in template.yaml). The samples use a fixed
placeholder bucket and queue ARNs; each test points them at the local stack's own resources and first seeds
what the sample refers to (the input object, the job a shard or a finalize request belongs to).

The samples tell one story: the job submission's first record (client token `nightly-eval-2024-06-17`) creates
the job whose shard 0 is the worker sample and whose finalize request is the finalizer sample.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import S3SqsEventNotificationModel, SqsModel

from sagebatch.domain.job import JobStatus
from sagebatch.domain.messages import FinalizeRequest, Shard
from sagebatch.tooling.local.runner import LambdaContext, load_handler, sqs_event
from sagebatch.tooling.local.session import LocalRun
from sagebatch.tooling.local.stack import ACCOUNT, REGION
from sagebatch.tooling.local.template import SqsTrigger, load_template, sqs_triggers
from sagebatch.usecases.intake import job_id_for
from tests.conftest import ROOT, jsonl

EVENTS_DIR = ROOT / "events"
EVENT_FILES = sorted(EVENTS_DIR.glob("*.json"))
TEMPLATE = load_template(ROOT / "template.yaml")
TRIGGERS: dict[str, SqsTrigger] = {t.function: t for t in sqs_triggers(TEMPLATE, ROOT)}

# Placeholders the samples use for the deployed stack's physical names.
PLACEHOLDER_BUCKET = "sagebatch-databucket-example"

# What the samples refer to. The sizes and ETags in the samples are those of these bytes.
DROP_KEY = "inputs/my prompts ü+1.jsonl"  # arrives as inputs/my+prompts+%C3%BC%2B1.jsonl
DROP_DATA = jsonl(
    {"id": "ü-1", "prompt": "Translate 'good morning' into German."},
    {"id": "plus-2", "prompt": "What is 1+1? Answer with the number only."},
)
EVAL_KEY = "staging/eval-prompts.jsonl"
EVAL_DATA = jsonl(
    {"id": "q-001", "prompt": "Name the capital of Australia. Answer with the city only."},
    {
        "id": "q-002",
        "messages": [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "What is 17 * 3?"}],
    },
    {"id": "q-003", "prompt": "Give one word that rhymes with 'batch'."},
)
EVAL_CLIENT_TOKEN = "nightly-eval-2024-06-17"
EVAL_PARAMETERS = {"max_new_tokens": 64, "temperature": 0.2}
EVAL_JOB_ID = job_id_for(f"token:{EVAL_CLIENT_TOKEN}")
EVAL_OUTCOMES = [(1, "q-001", "succeeded"), (2, "q-002", "succeeded"), (3, "q-003", "succeeded")]  # (line, id, status)
INLINE_JOB_ID = "support-triage-2024-06-17"
INLINE_RECORDS = [
    {
        "id": "ticket-4812",
        "prompt": "Classify this support ticket as billing, bug or question: 'I was charged twice this month.'",
    },
    {
        "id": "ticket-4813",
        "messages": [{"role": "user", "content": "Summarise in one line: the export button does nothing on Safari 17."}],
    },
]


# -- helpers -------------------------------------------------------------------------------------
def function_for(path: Path) -> str:
    """events/<function>-<what>.json -> the template's <Function>Function, or fail naming the file."""
    prefix = path.stem.split("-", 1)[0]
    name = f"{prefix.capitalize()}Function"
    if TEMPLATE["Resources"].get(name, {}).get("Type") != "AWS::Serverless::Function":
        functions = sorted(k for k, v in TEMPLATE["Resources"].items() if v["Type"] == "AWS::Serverless::Function")
        pytest.fail(
            f"events/{path.name}: prefix '{prefix}' maps to {name}, which template.yaml does not define "
            f"(functions: {', '.join(functions)})"
        )
    if name not in TRIGGERS:
        pytest.fail(f"events/{path.name}: {name} has no SQS event source in template.yaml")
    return name


def load_event(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def set_body(record: dict[str, Any], body: str) -> None:
    """Replace a record's body, keeping md5OfBody consistent as SQS would."""
    record["body"] = body
    record["md5OfBody"] = hashlib.md5(body.encode("utf-8")).hexdigest()


def md5_of_message_attributes(attributes: dict[str, Any]) -> str:
    """SQS's MD5OfMessageAttributes: per attribute, sorted by name, length-prefixed name, type, transport byte, value."""
    digest = hashlib.md5()

    def field(data: bytes) -> None:
        digest.update(len(data).to_bytes(4, "big") + data)

    for name in sorted(attributes):
        attribute = attributes[name]
        field(name.encode("utf-8"))
        field(attribute["dataType"].encode("utf-8"))
        if attribute["dataType"].startswith("Binary"):
            digest.update(b"\x02")
            field(base64.b64decode(attribute["binaryValue"]))
        else:
            digest.update(b"\x01")
            field(attribute["stringValue"].encode("utf-8"))
    return digest.hexdigest()


def retarget(event: dict[str, Any], stack: LocalRun, function: str) -> dict[str, Any]:
    """The sample with the placeholder bucket and queue ARN replaced by the local stack's."""
    event = json.loads(json.dumps(event).replace(PLACEHOLDER_BUCKET, stack.stack.bucket))
    queue_arn = stack.stack.physical[TRIGGERS[function].queue]["Arn"]
    for record in event["Records"]:
        record["eventSourceARN"] = queue_arn
        set_body(record, record["body"])
    return event


def invoke(function: str, event: dict[str, Any], stack: LocalRun) -> Any:
    """Call functions/<name>/app.py's lambda_handler, loaded the way the local event source poller does."""
    handler = load_handler(TRIGGERS[function].handler_path)
    return handler(event, LambdaContext(function, stack.stack.function_timeout(function)))


def upload(stack: LocalRun, key: str, data: bytes) -> dict[str, Any]:
    return boto3.client("s3", region_name=REGION).put_object(Bucket=stack.stack.bucket, Key=key, Body=data)


def receive_all(stack: LocalRun, queue: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=REGION)
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(QueueUrl=stack.stack.queue_url(queue), MaxNumberOfMessages=10, AttributeNames=["All"]).get(
        "Messages", []
    ):
        messages += batch
    return messages


def queue_depth(stack: LocalRun, queue: str) -> int:
    attributes = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=stack.stack.queue_url(queue), AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def keys_under(stack: LocalRun, prefix: str) -> list[str]:
    listing = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=stack.stack.bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def deliver(stack: LocalRun, function: str, messages: list[dict[str, Any]]) -> None:
    """Hand messages to a function's real handler as its event source would, and require they all succeed."""
    queue_arn = stack.stack.physical[TRIGGERS[function].queue]["Arn"]
    response = invoke(function, sqs_event(messages, queue_arn), stack)
    assert response == {"batchItemFailures": []}, f"{function} failed while seeding the stack: {response}"


def submit_eval_job(stack: LocalRun) -> str:
    """A real intake of the nightly-eval job (the submission sample's first record); returns its job id."""
    upload(stack, EVAL_KEY, EVAL_DATA)
    spec = {"input": f"s3://{stack.stack.bucket}/{EVAL_KEY}", "client_token": EVAL_CLIENT_TOKEN, "parameters": EVAL_PARAMETERS}
    message = {
        "MessageId": "6f1f4a0e-2b0c-4c55-9d3f-0d8e6a1b2c3d",
        "ReceiptHandle": "seed",
        "Body": json.dumps(spec),
        "Attributes": {"ApproximateReceiveCount": "1"},
    }
    deliver(stack, "IntakeFunction", [message])
    job = stack.jobs.get_job(EVAL_JOB_ID)
    assert job is not None and job.status == JobStatus.RUNNING, f"intake did not start {EVAL_JOB_ID}: {job}"
    return EVAL_JOB_ID


# -- what each sample needs and does ---------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    given: Callable[[LocalRun, dict[str, Any]], dict[str, Any]]  # seed the stack; return the sample to send
    then: Callable[[LocalRun, dict[str, Any]], None]  # assert the sample's effect


def _given_the_dropped_object(stack: LocalRun, event: dict[str, Any]) -> dict[str, Any]:
    # The object the notification announces exists at the *decoded* key; the sample's versionId is a
    # placeholder for the version S3 assigns, so it becomes the uploaded object's.
    put = upload(stack, DROP_KEY, DROP_DATA)
    record = event["Records"][0]
    notification = json.loads(record["body"])
    s3_object = notification["Records"][0]["s3"]["object"]
    assert unquote_plus(s3_object["key"]) == DROP_KEY
    assert (s3_object["size"], s3_object["eTag"]) == (len(DROP_DATA), put["ETag"].strip('"')), "sample out of date with DROP_DATA"
    s3_object["versionId"] = put["VersionId"]
    set_body(record, json.dumps(notification))
    return event


def _then_a_job_runs_over_the_decoded_key(stack: LocalRun, event: dict[str, Any]) -> None:
    # One job, identified by the object version, reading the decoded key, with its lines sharded out.
    version = json.loads(event["Records"][0]["body"])["Records"][0]["s3"]["object"]["versionId"]
    job_id = job_id_for(f"s3://{stack.stack.bucket}/{DROP_KEY}#{version}")
    job = stack.jobs.get_job(job_id)
    assert job is not None, f"no job {job_id} for s3://{stack.stack.bucket}/{DROP_KEY}"
    assert (job.status, job.key, job.version_id, job.total_records) == (JobStatus.RUNNING, DROP_KEY, version, 2)
    assert job.source == f"s3://{stack.stack.bucket}/{DROP_KEY}"
    shards = [Shard.model_validate_json(m["Body"]) for m in receive_all(stack, "WorkQueue")]
    assert [(s.job_id, s.key, s.lines) for s in shards] == [(job_id, DROP_KEY, 2)]


def _given_nothing(stack: LocalRun, event: dict[str, Any]) -> dict[str, Any]:
    return event


def _then_nothing_happens(stack: LocalRun, event: dict[str, Any]) -> None:
    # The test event is acknowledged and skipped: no job, no failure manifest, no work.
    assert stack.jobs_in_table() == []
    assert keys_under(stack, "outputs/") == []
    assert queue_depth(stack, "WorkQueue") == 0 and queue_depth(stack, "FinalizeQueue") == 0


def _given_the_named_input(stack: LocalRun, event: dict[str, Any]) -> dict[str, Any]:
    # The object the first record's s3:// URI names (inline records need nothing).
    upload(stack, EVAL_KEY, EVAL_DATA)
    return event


def _then_each_record_starts_a_job(stack: LocalRun, event: dict[str, Any]) -> None:
    # The s3:// submission: a job keyed by its client token, over the named object, with the job parameters.
    eval_job = stack.jobs.get_job(EVAL_JOB_ID)
    assert eval_job is not None, f"no job for client token {EVAL_CLIENT_TOKEN}"
    assert (eval_job.status, eval_job.bucket, eval_job.key, eval_job.total_records) == (
        JobStatus.RUNNING,
        stack.stack.bucket,
        EVAL_KEY,
        3,
    )
    assert eval_job.parameters.model_dump(exclude_none=True) == EVAL_PARAMETERS
    # The inline submission: its records stored as the job's input, one line each.
    inline_job = stack.jobs.get_job(INLINE_JOB_ID)
    assert inline_job is not None and (inline_job.status, inline_job.total_records) == (JobStatus.RUNNING, 2)
    assert inline_job.parameters.model_dump(exclude_none=True) == {"max_new_tokens": 128}
    assert stack.read(f"jobs/{INLINE_JOB_ID}/input.jsonl") == jsonl(*INLINE_RECORDS)
    shards = sorted((s.job_id, s.lines) for s in (Shard.model_validate_json(m["Body"]) for m in receive_all(stack, "WorkQueue")))
    assert shards == sorted([(EVAL_JOB_ID, 3), (INLINE_JOB_ID, 2)])


def _given_the_job_of_the_shard(stack: LocalRun, event: dict[str, Any]) -> dict[str, Any]:
    # The job the shard belongs to, created by a real intake; the sample's version_id is a placeholder
    # for the version the input object gets, and is otherwise exactly the shard intake enqueued.
    record = event["Records"][0]
    sample = Shard.model_validate_json(record["body"])
    assert submit_eval_job(stack) == sample.job_id, "the worker sample's job_id is not the nightly-eval job's"
    enqueued = [Shard.model_validate_json(m["Body"]) for m in receive_all(stack, "WorkQueue")]
    assert len(enqueued) == 1
    set_body(record, sample.model_copy(update={"version_id": enqueued[0].version_id}).model_dump_json())
    assert Shard.model_validate_json(record["body"]) == enqueued[0], "the worker sample differs from the shard intake enqueues"
    return event


def _then_the_shard_results_are_stored(stack: LocalRun, event: dict[str, Any]) -> None:
    # One succeeded result per line of the shard, the shard counted, and (the job's only shard) finalization begun.
    results = list(stack.result_store.results(EVAL_JOB_ID))
    assert [(r.line, r.id, r.status) for r in results] == EVAL_OUTCOMES
    assert all(r.output and r.usage.output_tokens <= EVAL_PARAMETERS["max_new_tokens"] for r in results)
    job = stack.jobs.get_job(EVAL_JOB_ID)
    assert job is not None and (job.shards_done, job.succeeded, job.status) == (1, 3, JobStatus.FINALIZING)
    finalize = [FinalizeRequest.model_validate_json(m["Body"]) for m in receive_all(stack, "FinalizeQueue")]
    assert finalize == [FinalizeRequest(job_id=EVAL_JOB_ID)]


def _given_a_job_waiting_to_be_finalized(stack: LocalRun, event: dict[str, Any]) -> dict[str, Any]:
    # The job named by the sample, run through real intake and worker handlers up to JobStatus.FINALIZING.
    sample = FinalizeRequest.model_validate_json(event["Records"][0]["body"])
    assert submit_eval_job(stack) == sample.job_id, "the finalizer sample's job_id is not the nightly-eval job's"
    deliver(stack, "WorkerFunction", receive_all(stack, "WorkQueue"))
    job = stack.jobs.get_job(sample.job_id)
    assert job is not None and job.status == JobStatus.FINALIZING
    # The worker sent the very message the sample holds.
    real = [FinalizeRequest.model_validate_json(m["Body"]) for m in receive_all(stack, "FinalizeQueue")]
    assert real == [sample]
    return event


def _then_results_and_manifest_are_written(stack: LocalRun, event: dict[str, Any]) -> None:
    # results.jsonl in input order, a JobStatus.COMPLETED manifest with the counts, and the job closed.
    results = stack.results(EVAL_JOB_ID)
    assert [(r["line"], r["id"], r["status"]) for r in results] == EVAL_OUTCOMES
    manifest = stack.manifest(EVAL_JOB_ID)
    assert manifest["status"] == JobStatus.COMPLETED and manifest["counts"] == {"total": 3, "succeeded": 3, "failed": 0}
    assert manifest["input"] == f"s3://{stack.stack.bucket}/{EVAL_KEY}"
    assert stack.jobs.get_job(EVAL_JOB_ID).status == JobStatus.COMPLETED  # type: ignore[union-attr]


SCENARIOS: dict[str, Scenario] = {
    "intake-s3-drop.json": Scenario(_given_the_dropped_object, _then_a_job_runs_over_the_decoded_key),
    "intake-s3-test-event.json": Scenario(_given_nothing, _then_nothing_happens),
    "intake-job-submission.json": Scenario(_given_the_named_input, _then_each_record_starts_a_job),
    "worker-work-batch.json": Scenario(_given_the_job_of_the_shard, _then_the_shard_results_are_stored),
    "finalizer-finalize.json": Scenario(_given_a_job_waiting_to_be_finalized, _then_results_and_manifest_are_written),
}


# -- tests ---------------------------------------------------------------------------------------
def test_every_function_with_an_sqs_trigger_has_a_sample_event():
    # Given the functions template.yaml wires to queues
    functions = set(TRIGGERS)

    # When the sample events are mapped to functions by their file names
    covered = {function_for(path) for path in EVENT_FILES}

    # Then each function has at least one sample
    assert functions <= covered, f"no events/<function>-*.json for {sorted(functions - covered)}"


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.name)
def test_sample_event_is_an_aws_shaped_sqs_event_from_its_functions_queue(path):
    # Given a sample event and the function its name maps to
    function = function_for(path)
    event = load_event(path)

    # When it is read as Lambda's SQS event (Powertools' model of the AWS shape)
    parsed = SqsModel.model_validate(event)

    # Then every record is complete and consistent: body digest, receive count, the function's own queue
    assert parsed.Records, f"events/{path.name} has no records"
    for record in event["Records"]:
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode("utf-8")).hexdigest()
        assert int(record["attributes"]["ApproximateReceiveCount"]) >= 1
        assert record["eventSourceARN"].startswith(f"arn:aws:sqs:{record['awsRegion']}:{ACCOUNT}:")
        assert f"-{TRIGGERS[function].queue}-" in record["eventSourceARN"], "the ARN names another queue"
        if record["messageAttributes"]:
            assert record["md5OfMessageAttributes"] == md5_of_message_attributes(record["messageAttributes"])


def test_s3_drop_sample_is_a_full_aws_notification_with_an_encoded_key():
    # Given the S3 drop sample
    event = load_event(EVENTS_DIR / "intake-s3-drop.json")

    # When its bodies are parsed with Powertools' strict S3-through-SQS model (sequencer, identities and all)
    parsed = S3SqsEventNotificationModel.model_validate(event)

    # Then it is an ObjectCreated:Put of schema 2.1 whose key is URL-encoded the way S3 encodes it
    s3_record = parsed.Records[0].body.Records[0]  # type: ignore[union-attr]
    assert (s3_record.eventVersion, s3_record.eventName) == ("2.1", "ObjectCreated:Put")
    assert s3_record.s3.object.key == "inputs/my+prompts+%C3%BC%2B1.jsonl"
    assert unquote_plus(s3_record.s3.object.key) == DROP_KEY
    assert s3_record.s3.object.versionId and s3_record.s3.object.sequencer


def test_s3_test_event_sample_has_the_shape_s3_sends():
    # Given the s3:TestEvent sample
    event = load_event(EVENTS_DIR / "intake-s3-test-event.json")

    # When its body is read
    body = json.loads(event["Records"][0]["body"])

    # Then it is S3's test message: these fields and no Records
    assert body == {**body, "Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": PLACEHOLDER_BUCKET}
    assert set(body) == {"Service", "Event", "Time", "Bucket", "RequestId", "HostId"}


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.name)
def test_sample_event_does_what_it_describes_with_no_item_failures(path, stack):
    function = function_for(path)
    scenario = SCENARIOS.get(path.name)
    if scenario is None:
        pytest.fail(f"events/{path.name} has no scenario: add what it needs and does to SCENARIOS in {Path(__file__).name}")

    # Given the sample pointed at the local stack, and the stack seeded with what it refers to
    event = scenario.given(stack, retarget(load_event(path), stack, function))

    # When the function's real handler receives it
    response = invoke(function, event, stack)

    # Then Lambda gets a valid partial-batch response with no item failures
    assert response == {"batchItemFailures": []}
    # And the sample had its effect
    scenario.then(stack, event)
