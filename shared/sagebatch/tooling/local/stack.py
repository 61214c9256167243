"""LocalStack: the template's bucket, queues and table created in moto, plus the endpoint emulator.

Resources are built from template.yaml's own properties (queue attributes and redrive policies,
key schema, TTL, versioning, the S3 -> SQS notification), so the local stack and the deployed one
cannot drift apart.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from sagebatch.tooling.emulator.process import EmulatorProcess
from sagebatch.tooling.emulator.server import Emulator, EmulatorServer
from sagebatch.tooling.local.template import default_template_path, load_template

REGION = "us-east-1"
ACCOUNT = "123456789012"
_FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
_LOOPBACK = ("http://127.0.0.1:", "http://localhost:")  # the emulator; no moto service answers there


def use_fake_aws_environment() -> None:
    """Dummy credentials and a region, so nothing can reach a real account."""
    os.environ.update(_FAKE_CREDENTIALS)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "sagebatch")


@contextmanager
def moto_requests_one_at_a_time() -> Iterator[None]:
    """Make each request atomic inside moto, as it is on AWS.

    moto's backends are not thread-safe: its TransactWriteItems deep-copies the table and restores the copy when
    the transaction is cancelled, so two workers completing shards at the same moment could wipe each other's
    counts (seen as a job stuck RUNNING). The local stack runs several handler invocations in parallel, so every
    request moto serves is handled under one lock. The endpoint emulator's traffic (loopback) is not moto's: it goes
    straight out, neither held by the lock nor matched against moto's 183 URL patterns (0.1 ms a call).
    """
    from moto.core.botocore_stubber import BotocoreStubber

    original = BotocoreStubber.process_request
    lock = threading.RLock()

    def process_request(self: Any, request: Any) -> Any:
        if request.url.startswith(_LOOPBACK):
            return None  # botocore sends it over HTTP
        with lock:
            return original(self, request)

    BotocoreStubber.process_request = process_request  # type: ignore[method-assign]
    try:
        yield
    finally:
        BotocoreStubber.process_request = original  # type: ignore[method-assign]


class LocalStack:
    """Create the stack's resources inside an already started moto mock (`moto.mock_aws`)."""

    def __init__(
        self,
        template_path: Path | None = None,
        parameters: dict[str, Any] | None = None,
        emulator: Emulator | EmulatorProcess | None = None,
    ):
        """`emulator`: an `Emulator` to serve from this process (tests read its state), an `EmulatorProcess` to
        start in a process of its own (`sagebatch run`), or None for the plain emulator in this process."""
        self.template_path = template_path or default_template_path()
        self.root = self.template_path.parent
        self.template = load_template(self.template_path)
        self.parameters = {name: spec.get("Default") for name, spec in self.template.get("Parameters", {}).items()} | (
            parameters or {}
        )
        self.suffix = uuid.uuid4().hex[:8]
        self.physical: dict[str, dict[str, str]] = {}  # logical id -> {"Ref": ..., "Arn": ..., ...}
        self.emulator_server: EmulatorServer | EmulatorProcess = (
            emulator
            if isinstance(emulator, EmulatorProcess)
            else EmulatorServer(emulator or Emulator(endpoint_name=str(self.parameters["EndpointName"])))
        )

    # -- references ------------------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((kind, arg),) = value.items()
            if kind == "Ref":
                if arg in self.parameters:
                    return self.parameters[arg]
                return {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws"}.get(arg) or self.physical[arg][
                    "Ref"
                ]
            if kind == "Fn::GetAtt":
                return self.physical[arg[0]][arg[1]]
            if kind == "Fn::Sub" and isinstance(arg, str):
                return self._substitute(arg)
            if kind == "Fn::Join":
                return arg[0].join(str(self.resolve(v)) for v in arg[1])
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def _substitute(self, text: str) -> str:
        import re

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if "." in name:
                logical, attribute = name.split(".", 1)
                return str(self.physical[logical][attribute])
            return str(self.resolve({"Ref": name}))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == kind}

    # -- creation --------------------------------------------------------------------------
    def create(self) -> LocalStack:
        self._create_queues()
        self._create_tables()
        self._create_buckets()
        self._create_notification_targets()
        self.emulator_server.start()
        return self

    def stop(self) -> None:
        self.emulator_server.stop()

    def _create_queues(self) -> None:
        sqs = boto3.client("sqs", region_name=REGION)
        queues = self.resources("AWS::SQS::Queue")
        # Dead-letter queues first: source queues' redrive policies point at them.
        ordered = sorted(queues, key=lambda name: "RedrivePolicy" in queues[name].get("Properties", {}))
        for logical in ordered:
            props = dict(queues[logical].get("Properties", {}))
            name = f"sagebatch-{self.suffix}-{logical}"
            attributes = {}
            for key in (
                "VisibilityTimeout",
                "MessageRetentionPeriod",
                "MaximumMessageSize",
                "DelaySeconds",
                "ReceiveMessageWaitTimeSeconds",
            ):
                if key in props:
                    attributes[key] = str(self.resolve(props[key]))
            if "RedrivePolicy" in props:
                attributes["RedrivePolicy"] = json.dumps(self.resolve(props["RedrivePolicy"]))
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.physical[logical] = {"Ref": url, "Arn": arn, "QueueName": name, "QueueUrl": url}

    def _create_tables(self) -> None:
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        for logical, resource in self.resources("AWS::DynamoDB::Table").items():
            props = resource["Properties"]
            name = f"sagebatch-{self.suffix}-{logical}"
            dynamodb.create_table(
                TableName=name,
                AttributeDefinitions=props["AttributeDefinitions"],
                KeySchema=props["KeySchema"],
                BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
                **({"GlobalSecondaryIndexes": props["GlobalSecondaryIndexes"]} if "GlobalSecondaryIndexes" in props else {}),
            )
            if "TimeToLiveSpecification" in props:
                dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=props["TimeToLiveSpecification"])
            self.physical[logical] = {"Ref": name, "Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"}

    def _create_buckets(self) -> None:
        s3 = boto3.client("s3", region_name=REGION)
        for logical, resource in self.resources("AWS::S3::Bucket").items():
            props = resource["Properties"]
            name = f"sagebatch-{self.suffix}-{logical.lower()}"
            s3.create_bucket(Bucket=name)
            self.physical[logical] = {"Ref": name, "Arn": f"arn:aws:s3:::{name}"}
            if "VersioningConfiguration" in props:
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration=props["VersioningConfiguration"])
            if "BucketEncryption" in props:
                s3.put_bucket_encryption(
                    Bucket=name,
                    ServerSideEncryptionConfiguration={
                        "Rules": [
                            {
                                "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]
                            }  # CFN and API spell it differently
                            for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                        ]
                    },
                )
            notification = props.get("NotificationConfiguration", {})
            if notification:
                queue_configs = [
                    {
                        "QueueArn": self.resolve(q["Queue"]),
                        "Events": [q["Event"]],
                        "Filter": {"Key": {"FilterRules": q["Filter"]["S3Key"]["Rules"]}} if "Filter" in q else {},
                    }
                    for q in notification.get("QueueConfigurations", [])
                ]
                s3.put_bucket_notification_configuration(
                    Bucket=name, NotificationConfiguration={"QueueConfigurations": queue_configs}
                )

    def _create_notification_targets(self) -> None:
        """The bus and topic job events go to (EventBusName, NotificationTopicArn). On AWS both exist outside the
        stack; moto has the default bus already, any other bus and the topic are made here."""
        if self.event_bus_name != "default":
            boto3.client("events", region_name=REGION).create_event_bus(Name=self.event_bus_name)
        if self.notification_topic_arn:
            sns = boto3.client("sns", region_name=REGION)
            arn = sns.create_topic(Name=self.notification_topic_arn.rsplit(":", 1)[-1])["TopicArn"]
            if arn != self.notification_topic_arn:
                raise ValueError(f"NotificationTopicArn must be in {REGION} and account {ACCOUNT} locally (e.g. {arn})")

    # -- what handlers see -----------------------------------------------------------------
    def environment(self, function: str | None = None) -> dict[str, str]:
        """The function's environment variables as Lambda would set them, plus the emulator URL."""
        variables = dict(self.template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
        if function:
            props = self.template["Resources"][function]["Properties"]
            variables |= props.get("Environment", {}).get("Variables", {})
        resolved = {k: str(self.resolve(v)) for k, v in variables.items()}
        resolved["SAGEBATCH_ENDPOINT_URL"] = self.emulator_server.url
        return resolved

    def apply_environment(self) -> None:
        os.environ.update(self.environment())

    @property
    def bucket(self) -> str:
        return self.physical["DataBucket"]["Ref"]

    def queue_url(self, logical: str) -> str:
        return self.physical[logical]["Ref"]

    @property
    def table(self) -> str:
        return self.physical["JobsTable"]["Ref"]

    @property
    def event_bus_name(self) -> str:
        return str(self.parameters.get("EventBusName") or "default")

    @property
    def notification_topic_arn(self) -> str | None:
        return str(self.parameters.get("NotificationTopicArn") or "") or None

    def function_timeout(self, function: str) -> int:
        props = self.template["Resources"][function]["Properties"]
        return int(props.get("Timeout") or self.template.get("Globals", {}).get("Function", {}).get("Timeout", 3))
