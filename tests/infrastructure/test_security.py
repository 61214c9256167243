"""template.yaml read as data: the locked-down stack (least-privilege IAM, TLS, encryption, PITR, quiet logs).

Each property is a checker function that returns the violations it finds. The tests assert that the real
template has none, and (at the bottom) that each checker does find a violation planted in a copy of the
template, so no assertion here can pass vacuously.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest

from sagebatch.tooling.local.template import load_template
from tests.conftest import ROOT

TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES = TEMPLATE["Resources"]
FUNCTIONS = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::Serverless::Function"}
QUEUES = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::SQS::Queue"}
DLQS = sorted(
    {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in QUEUES.values()
        if "RedrivePolicy" in q["Properties"]
    }
)

# X-Ray's PutTraceSegments and PutTelemetryRecords support no resource-level permissions: AWS requires
# Resource "*" for them (the Lambda active-tracing permissions). Nothing else may use a bare "*".
XRAY_WRITE = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
# Parameters whose values name resources outside the stack that an operator explicitly approves.
SCOPING_PARAMETERS = {"EndpointName", "AllowedInputLocations", "EventBusName", "NotificationTopicArn"}
ENDPOINT_ARN = {"Fn::Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:endpoint/${EndpointName}"}
EVENT_BUS = "event-bus/${EventBusName}"  # rendered: arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:...

# Exactly what each function's code calls (shared/sagebatch/adapters/*.py), on which resource. A new boto3
# call needs a new line here and in template.yaml; an unused grant fails this table.
EXPECTED_GRANTS = {
    "IntakeFunctionRole": {
        "sqs:ReceiveMessage": {"IntakeQueue"},
        "sqs:DeleteMessage": {"IntakeQueue"},
        "sqs:GetQueueAttributes": {"IntakeQueue"},
        "s3:GetObject": {"DataBucket/*"},
        "s3:GetObjectVersion": {"DataBucket/*"},
        "s3:ListBucket": {"DataBucket"},
        "s3:PutObject": {"DataBucket/jobs/*", "DataBucket/outputs/*"},
        # upload_fileobj of a retry's input: Abort cleans up a failed multipart upload.
        "s3:AbortMultipartUpload": {"DataBucket/jobs/*"},
        "dynamodb:GetItem": {"JobsTable"},
        "dynamodb:PutItem": {"JobsTable"},
        "dynamodb:UpdateItem": {"JobsTable"},
        "sqs:SendMessage": {"WorkQueue", "FinalizeQueue", "IntakeQueue"},
        "events:PutEvents": {EVENT_BUS},  # CREATING, RUNNING, FAILED
        "logs:CreateLogStream": {"IntakeLogGroup"},
        "logs:PutLogEvents": {"IntakeLogGroup"},
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
    },
    "WorkerFunctionRole": {
        "sqs:ReceiveMessage": {"WorkQueue"},
        "sqs:DeleteMessage": {"WorkQueue"},
        "sqs:ChangeMessageVisibility": {"WorkQueue"},  # a shard the invocation took itself goes back
        "sqs:GetQueueAttributes": {"WorkQueue"},
        "s3:GetObject": {"DataBucket/*"},
        "s3:GetObjectVersion": {"DataBucket/*"},
        "s3:ListBucket": {"DataBucket"},  # a part not written yet reads as 404
        "s3:PutObject": {"DataBucket/outputs/*/parts/*"},  # a shard's part and its checkpoint
        # TransactWriteItems is authorised per item: PutItem (shard marker) + UpdateItem (job counters).
        "dynamodb:GetItem": {"JobsTable"},
        "dynamodb:PutItem": {"JobsTable"},
        "dynamodb:UpdateItem": {"JobsTable"},
        "dynamodb:Query": {"JobsTable"},
        "sqs:SendMessage": {"FinalizeQueue"},
        "sagemaker:InvokeEndpoint": {"endpoint/${EndpointName}"},
        "logs:CreateLogStream": {"WorkerLogGroup"},
        "logs:PutLogEvents": {"WorkerLogGroup"},
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
    },
    "FinalizerFunctionRole": {
        "sqs:ReceiveMessage": {"FinalizeQueue"},
        "sqs:DeleteMessage": {"FinalizeQueue"},
        "sqs:GetQueueAttributes": {"FinalizeQueue"},
        # upload_fileobj: PutObject covers the multipart create/part/complete calls; Abort cleans up a failure.
        "s3:PutObject": {"DataBucket/outputs/*"},
        "s3:AbortMultipartUpload": {"DataBucket/outputs/*"},
        "s3:GetObject": {"DataBucket/*"},  # the parts, the assembly checkpoint, the input (peer formats)
        "s3:GetObjectVersion": {"DataBucket/*"},
        "s3:ListBucket": {"DataBucket"},  # the job's parts
        "s3:DeleteObject": {"DataBucket/outputs/*/assembly*"},  # the assembly checkpoint, once assembled
        "sqs:SendMessage": {"FinalizeQueue"},  # an assembly out of time continues in a new message
        "dynamodb:GetItem": {"JobsTable"},
        "dynamodb:Query": {"JobsTable"},
        "dynamodb:UpdateItem": {"JobsTable"},
        "events:PutEvents": {EVENT_BUS},  # FINALIZING, COMPLETED, CANCELLED, EXPIRED
        "logs:CreateLogStream": {"FinalizerLogGroup"},
        "logs:PutLogEvents": {"FinalizerLogGroup"},
        "xray:PutTraceSegments": {"*"},
        "xray:PutTelemetryRecords": {"*"},
    },
}


# -- reading policies ---------------------------------------------------------------------------
def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def identity_statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, statement) for every statement of every identity policy: role inline policies, IAM policies,
    and any inline statements a SAM function declares under `Policies`."""
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        documents = []
        if resource["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents = [props["PolicyDocument"]]
        elif resource["Type"] == "AWS::Serverless::Function":
            documents = [p for p in as_list(props.get("Policies", [])) if isinstance(p, dict) and "Statement" in p]
        for document in documents:
            for statement in as_list(document["Statement"]):
                yield name, statement


def resource_policy_statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in template["Resources"].items():
        if resource["Type"] in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"):
            for statement in as_list(resource["Properties"]["PolicyDocument"]["Statement"]):
                yield name, statement


def references(expression: Any) -> set[str]:
    """Names (resources, parameters, pseudo parameters) an intrinsic expression refers to."""
    if isinstance(expression, dict) and len(expression) == 1:
        ((kind, argument),) = expression.items()
        if kind == "Ref":
            return {argument}
        if kind == "Fn::GetAtt":
            return {argument[0] if isinstance(argument, list) else argument.split(".")[0]}
        if kind == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            names = {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)} - set(variables)
            return names | references(list(variables.values()))
    if isinstance(expression, dict):
        return set().union(*(references(v) for v in expression.values())) if expression else set()
    if isinstance(expression, list):
        return set().union(*(references(v) for v in expression)) if expression else set()
    return set()


def render(expression: Any) -> str:
    """A readable form of a resource ARN expression: GetAtt X.Arn -> X, ${X.Arn}/p/* -> X/p/*."""
    if isinstance(expression, str):
        return expression
    if "Fn::GetAtt" in expression:
        return references(expression).pop()
    if "Fn::Sub" in expression and isinstance(expression["Fn::Sub"], str):
        text = re.sub(r"\$\{(\w+)\.Arn\}", r"\1", expression["Fn::Sub"])
        return re.sub(r"^arn:\$\{AWS::Partition\}:(sagemaker|events):\$\{AWS::Region\}:\$\{AWS::AccountId\}:", "", text)
    return repr(expression)


def role_grants(template: dict[str, Any], role: str) -> dict[str, set[str]]:
    """action -> rendered resources, over the role's own inline policies (unconditional grants)."""
    grants: dict[str, set[str]] = {}
    for policy in template["Resources"][role]["Properties"].get("Policies", []):
        for statement in as_list(policy["PolicyDocument"]["Statement"]):
            if statement["Effect"] == "Allow":
                for action in as_list(statement["Action"]):
                    grants.setdefault(action, set()).update(render(r) for r in as_list(statement["Resource"]))
    return grants


# -- checkers: each returns what it finds wrong ---------------------------------------------------
def wildcard_actions(template: dict[str, Any]) -> list[str]:
    """Allow statements (identity or resource policies) whose actions are `*`, `service:*` or any pattern."""
    found = []
    for owner, statement in [*identity_statements(template), *resource_policy_statements(template)]:
        if statement["Effect"] != "Allow":
            continue  # a Deny may be broad: DenyInsecureTransport refuses every s3 action over plain HTTP
        for action in as_list(statement.get("Action", [])) + as_list(statement.get("NotAction", [])):
            if not isinstance(action, str) or "*" in action or "?" in action:
                found.append(f"{owner}: {action}")
    return found


def unscoped_resources(template: dict[str, Any]) -> list[str]:
    """Identity-policy resources that name no resource of this stack (nor an operator-approved parameter)."""
    stack_names = set(template["Resources"]) | SCOPING_PARAMETERS
    found = []
    for owner, statement in identity_statements(template):
        if "NotResource" in statement:
            found.append(f"{owner}: NotResource")
        for resource in as_list(statement.get("Resource", [])):
            if resource == "*" and set(as_list(statement["Action"])) <= XRAY_WRITE:
                continue  # required by X-Ray (see XRAY_WRITE)
            if isinstance(resource, str) or not references(resource) & stack_names:
                found.append(f"{owner}: {render(resource)} for {statement['Action']}")
    return found


def bucket_tls_violations(template: dict[str, Any]) -> list[str]:
    """Buckets without a policy that denies every request made without TLS, on the bucket and its objects."""
    found = []
    for bucket, resource in template["Resources"].items():
        if resource["Type"] != "AWS::S3::Bucket":
            continue
        arns = [{"Fn::GetAtt": [bucket, "Arn"]}, {"Fn::Sub": f"${{{bucket}.Arn}}/*"}]
        denies = [
            statement
            for _, policy in template["Resources"].items()
            if policy["Type"] == "AWS::S3::BucketPolicy" and policy["Properties"]["Bucket"] == {"Ref": bucket}
            for statement in as_list(policy["Properties"]["PolicyDocument"]["Statement"])
            if statement["Effect"] == "Deny"
            and statement.get("Principal") in ("*", {"AWS": "*"})
            and "s3:*" in as_list(statement["Action"])
            and all(arn in as_list(statement["Resource"]) for arn in arns)
            and statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
        ]
        if not denies:
            found.append(bucket)
    return found


def unencrypted_stores(template: dict[str, Any]) -> list[str]:
    found = []
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        kind = resource["Type"]
        if kind == "AWS::SQS::Queue" and not (props.get("SqsManagedSseEnabled") is True or props.get("KmsMasterKeyId")):
            found.append(name)
        if kind == "AWS::DynamoDB::Table" and props.get("SSESpecification", {}).get("SSEEnabled") is not True:
            found.append(name)
        if kind == "AWS::S3::Bucket" and not props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration"):
            found.append(name)
    return found


def tables_without_pitr(template: dict[str, Any]) -> list[str]:
    return [
        name
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::DynamoDB::Table"
        and resource["Properties"].get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is not True
    ]


def endpoint_grant_violations(template: dict[str, Any]) -> list[str]:
    """Any sagemaker action other than the worker's InvokeEndpoint on the stack's endpoint."""
    found = []
    for owner, statement in identity_statements(template):
        actions = [a for a in as_list(statement["Action"]) if str(a).lower().startswith("sagemaker:")]
        if not actions:
            continue
        if owner != "WorkerFunctionRole" or actions != ["sagemaker:InvokeEndpoint"] or as_list(statement["Action"]) != actions:
            found.append(f"{owner}: {statement['Action']}")
        elif as_list(statement["Resource"]) != [ENDPOINT_ARN]:
            found.append(f"{owner}: InvokeEndpoint on {statement['Resource']}")
    return found


def event_logging_violations(template: dict[str, Any]) -> list[str]:
    """Settings that would make Powertools log whole events (which can carry prompts) or debug output."""
    found = []
    environments = {"Globals": template["Globals"]["Function"].get("Environment", {}).get("Variables", {})}
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            environments[name] = resource["Properties"].get("Environment", {}).get("Variables", {})
    for where, variables in environments.items():
        log_event = variables.get("POWERTOOLS_LOGGER_LOG_EVENT", "false" if where != "Globals" else None)
        if str(log_event).lower() != "false":  # Globals must say "false" explicitly; functions may only repeat it
            found.append(f"{where}: POWERTOOLS_LOGGER_LOG_EVENT={log_event}")
        if str(variables.get("POWERTOOLS_LOG_LEVEL", "INFO")).upper() == "DEBUG":
            found.append(f"{where}: POWERTOOLS_LOG_LEVEL=DEBUG")
    return found


# -- the real template ----------------------------------------------------------------------------
def test_no_allow_statement_grants_a_wildcard_action():
    # Given every identity and resource policy statement; When wildcard actions are looked for
    found = wildcard_actions(TEMPLATE)

    # Then there are none (`*`, `s3:*`, `dynamodb:Get*` ...)
    assert found == []


def test_every_granted_resource_is_one_of_the_stacks_own():
    # Given every identity policy statement; When resources that name nothing of this stack are looked for
    found = unscoped_resources(TEMPLATE)

    # Then there are none: only X-Ray's trace writes use "*" (AWS offers no resource-level permission for them)
    assert found == []


@pytest.mark.parametrize("role", sorted(EXPECTED_GRANTS))
def test_each_function_is_granted_exactly_what_its_code_calls(role):
    # Given the role's inline policies; When they are read as action -> resources
    grants = role_grants(TEMPLATE, role)

    # Then they match the calls the function makes, no more and no less
    assert grants == EXPECTED_GRANTS[role]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_function_runs_as_its_own_role_without_sam_policies(name):
    # Given a function; Then it uses its explicit role, and no SAM `Policies` (SAM would then also attach
    # AWSLambdaBasicExecutionRole, AWSXrayWriteOnlyAccess and AWSLambdaSQSQueueExecutionRole, all on "*")
    props = FUNCTIONS[name]["Properties"]
    assert props["Role"] == {"Fn::GetAtt": [f"{name}Role", "Arn"]}
    assert "Policies" not in props
    assert "Role" not in TEMPLATE["Globals"]["Function"] and "Policies" not in TEMPLATE["Globals"]["Function"]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_function_logs_to_its_own_log_group_with_retention_and_may_write_only_there(name):
    # Given the function's LoggingConfig
    group = FUNCTIONS[name]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]

    # Then it is a log group of this stack that expires its logs, and the role writes only to it
    assert RESOURCES[group]["Type"] == "AWS::Logs::LogGroup"
    assert RESOURCES[group]["Properties"]["RetentionInDays"]
    grants = role_grants(TEMPLATE, f"{name}Role")
    assert grants["logs:PutLogEvents"] == grants["logs:CreateLogStream"] == {group}


def test_the_bucket_policy_denies_every_request_without_tls():
    # Given the buckets and their bucket policies; When buckets lacking a TLS-only deny are looked for
    found = bucket_tls_violations(TEMPLATE)

    # Then there are none
    assert found == []


def test_every_queue_the_table_and_the_bucket_are_encrypted_at_rest():
    # Given the queues, the table and the bucket; When unencrypted ones are looked for
    found = unencrypted_stores(TEMPLATE)

    # Then there are none (SSE-SQS on every queue, SSE on the table, SSE-S3 on the bucket)
    assert found == []
    assert len(QUEUES) == 6


def test_the_table_has_point_in_time_recovery():
    # Given the DynamoDB tables; Then each has PITR on
    assert tables_without_pitr(TEMPLATE) == []


def test_only_the_worker_may_invoke_and_only_the_stacks_endpoint():
    # Given every sagemaker grant; When grants beyond the worker's InvokeEndpoint on the endpoint ARN are looked for
    found = endpoint_grant_violations(TEMPLATE)

    # Then there are none, and the worker does have the grant
    assert found == []
    assert role_grants(TEMPLATE, "WorkerFunctionRole")["sagemaker:InvokeEndpoint"] == {"endpoint/${EndpointName}"}


def test_the_endpoint_name_must_be_lower_case_as_sagemaker_arns_are():
    # Given the EndpointName pattern (IAM compares ARNs case-sensitively; SageMaker lower-cases endpoint ARNs)
    pattern = re.compile(TEMPLATE["Parameters"]["EndpointName"]["AllowedPattern"])

    # Then the default passes and an upper-case name is refused
    assert pattern.match(TEMPLATE["Parameters"]["EndpointName"]["Default"])
    assert not pattern.match("Mistral-7B-Instruct")


def test_functions_never_log_whole_events():
    # Given the functions' environment; When settings that would log events (prompts) are looked for
    found = event_logging_violations(TEMPLATE)

    # Then there are none
    assert found == []


def test_allowed_input_locations_reach_the_functions_as_one_env_var():
    # Given the AllowedInputLocations parameter; Then the functions see it verbatim
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["SAGEBATCH_ALLOWED_INPUT_LOCATIONS"] == {"Ref": "AllowedInputLocations"}
    assert TEMPLATE["Parameters"]["AllowedInputLocations"]["Default"] == ""


def test_the_allowed_input_pattern_refuses_wildcards_spaces_and_bare_buckets():
    # Given the parameter's pattern (entries become IAM ARNs, so a wildcard would widen the grant)
    pattern = re.compile(TEMPLATE["Parameters"]["AllowedInputLocations"]["AllowedPattern"])

    # Then well-formed lists pass and anything that could widen the grant is refused
    for good in ("", "s3://partner-data/batches/", "s3://a-bucket/,s3://b.bucket/in/2024-"):
        assert pattern.match(good), good
    bad_values = (
        "s3://partner-data/*",
        "s3://partner-data/a?",
        "s3://partner-data",
        "s3://b/x, s3://c/",
        "arn:aws:s3:::b/x",
        "s3://B/x",
    )
    for bad in bad_values:
        assert not pattern.match(bad), bad


def _evaluate(expression: Any, parameters: dict[str, str]) -> Any:
    """Just enough of CloudFormation to evaluate the Fn::Split / Fn::Join / Ref ARN expression."""
    if isinstance(expression, dict):
        ((kind, argument),) = expression.items()
        if kind == "Ref":
            return parameters[argument]
        if kind == "Fn::Split":
            return _evaluate(argument[1], parameters).split(argument[0])
        if kind == "Fn::Join":
            return argument[0].join(_evaluate(argument[1], parameters))
        raise AssertionError(f"unexpected {kind}")
    if isinstance(expression, list):
        return [_evaluate(item, parameters) for item in expression]
    return expression


def test_extra_input_locations_are_readable_only_when_set_and_only_under_their_prefix():
    # Given the policy that grants reads on AllowedInputLocations
    policy = RESOURCES["AllowedInputsReadPolicy"]
    condition = TEMPLATE["Conditions"][policy["Condition"]]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]

    # When its resource ARNs are evaluated for two locations
    arns = _evaluate(statement["Resource"], {"AllowedInputLocations": "s3://partner-data/batches/,s3://archive/"})

    # Then it exists only when the parameter is set, grants reads only, to intake, worker and finalizer (peer
    # formats echo the input), under each prefix
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AllowedInputLocations"}, ""]}]}
    assert statement["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert policy["Properties"]["Roles"] == [
        {"Ref": "IntakeFunctionRole"},
        {"Ref": "WorkerFunctionRole"},
        {"Ref": "FinalizerFunctionRole"},
    ]
    assert arns == ["arn:aws:s3:::partner-data/batches/*", "arn:aws:s3:::archive/*"]


def test_finished_jobs_may_be_published_only_to_the_configured_topic_and_only_when_there_is_one():
    # Given the policy that grants sns:Publish for job notifications
    policy = RESOURCES["NotificationTopicPublishPolicy"]
    condition = TEMPLATE["Conditions"][policy["Condition"]]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]

    # Then it exists only when NotificationTopicArn is set, allows Publish alone, on that topic alone, to the two
    # functions that publish finished jobs (intake: FAILED; finalizer: COMPLETED, CANCELLED, EXPIRED)
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "NotificationTopicArn"}, ""]}]}
    assert TEMPLATE["Parameters"]["NotificationTopicArn"]["Default"] == ""
    assert (statement["Effect"], statement["Action"], statement["Resource"]) == (
        "Allow",
        "sns:Publish",
        {"Ref": "NotificationTopicArn"},
    )
    assert policy["Properties"]["Roles"] == [{"Ref": "IntakeFunctionRole"}, {"Ref": "FinalizerFunctionRole"}]
    assert not [s for _, s in identity_statements(TEMPLATE) if "sns:Publish" in as_list(s["Action"]) and s is not statement]


def test_the_notification_topic_pattern_takes_standard_topics_only():
    # Given the parameter's pattern; Then an empty value and a standard topic's ARN pass, a FIFO topic or junk does not
    pattern = re.compile(TEMPLATE["Parameters"]["NotificationTopicArn"]["AllowedPattern"])
    for good in ("", "arn:aws:sns:us-east-1:123456789012:sagebatch-jobs", "arn:aws-cn:sns:cn-north-1:123456789012:a_b"):
        assert pattern.match(good), good
    for bad in ("arn:aws:sns:us-east-1:123456789012:jobs.fifo", "sagebatch-jobs", "arn:aws:sns:us-east-1:123456789012:*"):
        assert not pattern.match(bad), bad


def test_events_go_to_the_configured_bus_which_defaults_to_the_default_bus():
    # Given the functions' environment and the EventBusName parameter
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]

    # Then the functions see the bus and the topic, and the bus is the account's default one unless set
    assert variables["SAGEBATCH_EVENT_BUS_NAME"] == {"Ref": "EventBusName"}
    assert variables["SAGEBATCH_NOTIFICATION_TOPIC_ARN"] == {"Ref": "NotificationTopicArn"}
    assert TEMPLATE["Parameters"]["EventBusName"]["Default"] == "default"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_reserved_concurrency_is_never_below_the_event_source_maximum(name):
    # Given the function's reserved concurrency (when ReserveConcurrency is "true") and its SQS MaximumConcurrency
    props = FUNCTIONS[name]["Properties"]
    condition, reserved, otherwise = props["ReservedConcurrentExecutions"]["Fn::If"]
    maximums = [e["Properties"]["ScalingConfig"]["MaximumConcurrency"] for e in props["Events"].values()]

    # Then they are the same value (aws-reliability.md 2: MaximumConcurrency <= reserved concurrency)
    assert condition == "ReservesConcurrency" and otherwise == {"Ref": "AWS::NoValue"}
    assert maximums == [reserved]


@pytest.mark.parametrize("dlq", DLQS)
def test_every_dead_letter_queue_alarms_on_its_first_message(dlq):
    # Given the CloudWatch alarms; When the one watching this DLQ is looked for
    alarms = [
        r["Properties"]
        for r in RESOURCES.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and {"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq, "QueueName"]}} in r["Properties"].get("Dimensions", [])
    ]

    # Then it fires as soon as one message is visible
    assert len(alarms) == 1
    alarm = alarms[0]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


def test_every_checkov_suppression_says_why():
    # Given every checkov skip in the template
    skips = [(name, skip) for name, r in RESOURCES.items() for skip in r.get("Metadata", {}).get("checkov", {}).get("skip", [])]

    # Then each names a check and justifies it in a sentence or more
    assert skips
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), name
        assert len(skip.get("comment", "").split()) >= 8, f"{name} {skip['id']}"


# -- each checker catches what it is for ------------------------------------------------------------
def _planted(mutate: Any) -> dict[str, Any]:
    template = copy.deepcopy(TEMPLATE)
    mutate(template)
    return template


def _statement(template: dict[str, Any], role: str, sid: str) -> dict[str, Any]:
    statements = template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    return next(s for s in statements if s.get("Sid") == sid)


def _set(role: str, sid: str, **fields: Any) -> Any:
    """A mutation that overwrites fields of one statement of a role's inline policy."""
    return lambda t: _statement(t, role, sid).update(fields)


def _props(t: dict[str, Any], name: str) -> dict[str, Any]:
    return t["Resources"][name]["Properties"]


def _first_statement(t: dict[str, Any], policy: str) -> dict[str, Any]:
    return _props(t, policy)["PolicyDocument"]["Statement"][0]


ANY_ENDPOINT = {"Fn::Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:endpoint/*"}
PLANTED = {
    "service wildcard action": (wildcard_actions, _set("FinalizerFunctionRole", "WriteOutputs", Action="s3:*")),
    "partial wildcard action": (wildcard_actions, _set("WorkerFunctionRole", "JobState", Action=["dynamodb:Get*"])),
    "allow-all in a queue policy": (wildcard_actions, lambda t: _first_statement(t, "IntakeQueuePolicy").update(Action="*")),
    "bare * resource": (unscoped_resources, _set("IntakeFunctionRole", "JobState", Resource="*")),
    "literal foreign bucket": (
        unscoped_resources,
        _set("WorkerFunctionRole", "ReadShardRangesInStackBucket", Resource="arn:aws:s3:::someone-else/*"),
    ),
    "pseudo-parameter-only ARN": (
        unscoped_resources,
        _set("FinalizerFunctionRole", "WriteOutputs", Resource={"Fn::Sub": "arn:${AWS::Partition}:s3:::*"}),
    ),
    "bucket policy without TLS condition": (
        bucket_tls_violations,
        lambda t: _first_statement(t, "DataBucketPolicy").update(Condition={}),
    ),
    "queue without SSE": (unencrypted_stores, lambda t: _props(t, "WorkDLQ").pop("SqsManagedSseEnabled")),
    "table without SSE": (unencrypted_stores, lambda t: _props(t, "JobsTable")["SSESpecification"].update(SSEEnabled=False)),
    "table without PITR": (tables_without_pitr, lambda t: _props(t, "JobsTable").pop("PointInTimeRecoverySpecification")),
    "intake may invoke the endpoint": (
        endpoint_grant_violations,
        _set("IntakeFunctionRole", "JobState", Action=["sagemaker:InvokeEndpoint"]),
    ),
    "worker may invoke any endpoint": (
        endpoint_grant_violations,
        _set("WorkerFunctionRole", "InvokeTheEndpoint", Resource=ANY_ENDPOINT),
    ),
    "events logged": (
        event_logging_violations,
        lambda t: t["Globals"]["Function"]["Environment"]["Variables"].update(POWERTOOLS_LOGGER_LOG_EVENT="true"),
    ),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_each_checker_finds_a_planted_violation(case):
    # Given a copy of the template with one violation planted
    checker, mutate = PLANTED[case]
    template = _planted(mutate)

    # When its checker runs; Then it reports it (while the real template is clean, tested above)
    assert checker(template) != []
    assert checker(TEMPLATE) == []


@pytest.mark.parametrize("role", sorted(EXPECTED_GRANTS))
def test_the_grant_table_notices_an_extra_action(role):
    # Given a role with one unused action added; Then it no longer matches the expected grants
    def mutate(t: dict[str, Any]) -> None:
        first = t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
        first["Action"] = as_list(first["Action"]) + ["sqs:PurgeQueue"]

    assert role_grants(_planted(mutate), role) != EXPECTED_GRANTS[role]
