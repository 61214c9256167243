"""template.yaml read as data: the properties that keep the pipeline from losing or doubling work."""

from __future__ import annotations

import ast

import pytest

from sagebatch.domain.limits import MAX_JOB_DEADLINE_S
from sagebatch.tooling.local.template import load_template, sqs_triggers
from tests.conftest import ROOT

TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES = TEMPLATE["Resources"]
FUNCTIONS = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::Serverless::Function"}
QUEUES = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::SQS::Queue"}
GLOBAL_TIMEOUT = TEMPLATE["Globals"]["Function"]["Timeout"]


def _timeout(function: str) -> int:
    return FUNCTIONS[function]["Properties"].get("Timeout", GLOBAL_TIMEOUT)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_handler_path_resolves_to_a_lambda_handler_function(name):
    # Given the function's CodeUri and Handler
    props = FUNCTIONS[name]["Properties"]
    module, _, attribute = props["Handler"].rpartition(".")
    path = ROOT / props["CodeUri"] / f"{module}.py"

    # When the module's source is parsed
    tree = ast.parse(path.read_text())

    # Then it defines the named function
    assert attribute in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("trigger", sqs_triggers(TEMPLATE, ROOT), ids=lambda t: t.function)
def test_every_sqs_event_reports_batch_item_failures_and_caps_concurrency(trigger):
    # Given an SQS event source; Then partial failures are honoured (else Lambda deletes the whole batch)
    events = FUNCTIONS[trigger.function]["Properties"]["Events"]
    for event in events.values():
        assert "ReportBatchItemFailures" in event["Properties"]["FunctionResponseTypes"]
        assert "MaximumConcurrency" in event["Properties"]["ScalingConfig"]


@pytest.mark.parametrize("trigger", sqs_triggers(TEMPLATE, ROOT), ids=lambda t: t.function)
def test_visibility_timeout_is_at_least_six_times_the_consumer_timeout(trigger):
    visibility = QUEUES[trigger.queue]["Properties"]["VisibilityTimeout"]
    assert visibility >= 6 * _timeout(trigger.function)


SQS_MAX_RETENTION_S = 1_209_600  # 14 days


@pytest.mark.parametrize("queue", sorted(k for k, v in QUEUES.items() if "RedrivePolicy" in v["Properties"]))
def test_every_source_queue_keeps_messages_14_days_and_has_a_dlq_with_five_receives(queue):
    # Given a source queue; Then it and its DLQ keep messages SQS's longest (a job may run 13 days), and the DLQ
    # never shorter than its source (a standard DLQ counts from the message's first enqueue)
    props = QUEUES[queue]["Properties"]
    dlq = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert props["RedrivePolicy"]["maxReceiveCount"] >= 5
    assert props["MessageRetentionPeriod"] == SQS_MAX_RETENTION_S
    assert QUEUES[dlq]["Properties"]["MessageRetentionPeriod"] == SQS_MAX_RETENTION_S


def test_the_longest_job_deadline_passes_a_day_before_the_work_queue_drops_its_shards():
    # Given the JobDeadlineSeconds parameter and the domain's bound on a message's own deadline_s
    parameter = TEMPLATE["Parameters"]["JobDeadlineSeconds"]
    retention = QUEUES["WorkQueue"]["Properties"]["MessageRetentionPeriod"]
    # Then both leave a day to answer still-queued shards as `expired`, and the default (0) derives it per job
    assert parameter["MaxValue"] == MAX_JOB_DEADLINE_S <= retention - 86_400
    assert (parameter["Default"], parameter["MinValue"]) == (0, 0)


def test_worker_concurrency_comes_from_the_worker_max_concurrency_parameter():
    event = FUNCTIONS["WorkerFunction"]["Properties"]["Events"]["Work"]["Properties"]
    assert event["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "WorkerMaxConcurrency"}


def test_the_bucket_is_versioned_encrypted_private_and_notifies_only_for_inputs():
    bucket = RESOURCES["DataBucket"]["Properties"]
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    rules = [r for q in bucket["NotificationConfiguration"]["QueueConfigurations"] for r in q["Filter"]["S3Key"]["Rules"]]
    assert rules == [{"Name": "prefix", "Value": "inputs/"}]  # results under outputs/ can never re-trigger intake


def test_the_table_is_on_demand_with_pitr_and_ttl():
    table = RESOURCES["JobsTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_the_stack_parameters_match_the_model_context():
    params = TEMPLATE["Parameters"]
    assert params["MaxInputLength"]["Default"] == 8191
    assert params["MaxTotalTokens"]["Default"] == 8192
    assert {"EndpointName", "DefaultMaxNewTokens", "EndpointMaxConcurrency", "WorkerMaxConcurrency"} <= set(params)


def test_the_runtime_is_the_project_python_on_arm64():
    function = TEMPLATE["Globals"]["Function"]
    assert function["Runtime"] == "python3.11" and function["Architectures"] == ["arm64"]


def test_outputs_name_the_bucket_queues_and_table():
    assert {"BucketName", "IntakeQueueUrl", "TableName"} <= set(TEMPLATE["Outputs"])
