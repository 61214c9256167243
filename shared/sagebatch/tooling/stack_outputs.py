"""A deployed stack by its name: its bucket, queues and table from template.yaml's CloudFormation outputs.

The name is `--stack NAME`, else the `SAGEBATCH_STACK` environment variable, else `stack_name` in the current
directory's `samconfig.toml` (`[default.deploy.parameters]`, then `[default.global.parameters]`), which is where
`sam deploy --guided` saves it. The region is `--region`, else the one `samconfig.toml` names when the stack name
came from it too (that is where `sam deploy` put the stack), else the environment's (AWS_REGION, the profile).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

STACK_ENV = "SAGEBATCH_STACK"
SAMCONFIG = "samconfig.toml"

DeadLetterQueue = Literal["intake", "work", "finalize"]
# template.yaml's DeadLetterQueueUrls output: the three URLs joined by commas, in this order.
DLQ_ORDER: tuple[DeadLetterQueue, ...] = ("intake", "work", "finalize")

# StackOutputs field -> the template output it is read from.
OUTPUT_NAMES: dict[str, str] = {
    "bucket": "BucketName",
    "intake_queue_url": "IntakeQueueUrl",
    "work_queue_url": "WorkQueueUrl",
    "finalize_queue_url": "FinalizeQueueUrl",
    "table": "TableName",
}
DLQ_OUTPUT = "DeadLetterQueueUrls"


class StackNotUsable(Exception):
    """No stack named, no such stack, or one without sagebatch's outputs: a usage problem (exit 2)."""


@dataclass(frozen=True)
class StackRef:
    """Which stack, in which region, and where its name came from (for messages)."""

    name: str
    region: str | None
    source: str  # "--stack", "SAGEBATCH_STACK" or "samconfig.toml"


class StackOutputs(BaseModel):
    """The resources of one deployed sagebatch stack."""

    model_config = ConfigDict(frozen=True)

    stack_name: str
    region: str | None
    bucket: str
    intake_queue_url: str
    work_queue_url: str
    finalize_queue_url: str
    dead_letter_queue_urls: dict[DeadLetterQueue, str]
    table: str

    @classmethod
    def from_outputs(cls, stack_name: str, region: str | None, outputs: Mapping[str, str]) -> StackOutputs:
        """From describe_stacks' outputs (OutputKey -> OutputValue); raises StackNotUsable when one is missing."""
        missing = [name for name in [*OUTPUT_NAMES.values(), DLQ_OUTPUT] if not outputs.get(name)]
        if missing:
            raise StackNotUsable(
                f"stack {stack_name} has no output {', '.join(missing)}: is it a sagebatch stack, "
                f"fully deployed from this template.yaml?"
            )
        dlqs = [url.strip() for url in outputs[DLQ_OUTPUT].split(",")]
        if len(dlqs) != len(DLQ_ORDER) or not all(dlqs):
            raise StackNotUsable(
                f"stack {stack_name}'s {DLQ_OUTPUT} output is not {len(DLQ_ORDER)} queue URLs ({', '.join(DLQ_ORDER)})"
            )
        values: dict[str, Any] = {field: outputs[name] for field, name in OUTPUT_NAMES.items()}
        return cls(stack_name=stack_name, region=region, dead_letter_queue_urls=dict(zip(DLQ_ORDER, dlqs, strict=True)), **values)

    def dlq_url(self, which: DeadLetterQueue) -> str:
        return self.dead_letter_queue_urls[which]


def samconfig_parameters(directory: Path) -> dict[str, Any]:
    """`samconfig.toml`'s deploy parameters in `directory` (global ones under deploy ones); {} without the file."""
    path = directory / SAMCONFIG
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise StackNotUsable(f"cannot read {path}: {error}") from None
    default = data.get("default", {})
    sections = [default.get("global", {}).get("parameters", {}), default.get("deploy", {}).get("parameters", {})]
    return {k: v for section in sections if isinstance(section, dict) for k, v in section.items()}


def stack_ref(
    stack: str | None, region: str | None, environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> StackRef:
    """Which stack the command means: --stack, else SAGEBATCH_STACK, else samconfig.toml's stack_name."""
    environ = os.environ if environ is None else environ
    if stack:
        return StackRef(stack, region, "--stack")
    if environ.get(STACK_ENV):
        return StackRef(environ[STACK_ENV], region, STACK_ENV)
    parameters = samconfig_parameters(directory or Path.cwd())
    if parameters.get("stack_name"):
        return StackRef(str(parameters["stack_name"]), region or parameters.get("region") or None, SAMCONFIG)
    raise StackNotUsable(f"no stack named: pass --stack NAME, set {STACK_ENV}, or run where `sam deploy` saved {SAMCONFIG}")


def read_stack_outputs(cloudformation: Any, ref: StackRef) -> StackOutputs:
    """describe_stacks on the named stack; StackNotUsable when there is no such stack in the region."""
    try:
        stacks = cloudformation.describe_stacks(StackName=ref.name)["Stacks"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ValidationError" and "does not exist" in str(error):
            where = ref.region or cloudformation.meta.region_name
            raise StackNotUsable(
                f"no stack {ref.name} in {where} (named by {ref.source}): deploy it with "
                f"`sam deploy`, or name another with --stack and --region"
            ) from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", []) if "OutputValue" in o}
    return StackOutputs.from_outputs(ref.name, ref.region or cloudformation.meta.region_name, outputs)
