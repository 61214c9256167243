"""The local stack as a named CloudFormation stack, so commands that take `--stack NAME` find its resources.

template.yaml's `Outputs` are resolved against the resources the local stack built (the values describe_stacks
shows for a deployed stack), and a CloudFormation stack holding just those outputs is created in moto.
"""

from __future__ import annotations

import json
import warnings

import boto3

from sagebatch.tooling.local.stack import REGION, LocalStack


def resolved_outputs(stack: LocalStack) -> dict[str, str]:
    """template.yaml's outputs with the local stack's names; outputs of resources it does not build are left out."""
    outputs: dict[str, str] = {}
    for name, spec in stack.template.get("Outputs", {}).items():
        if "Condition" in spec:
            continue
        try:
            value = stack.resolve(spec["Value"])
        except KeyError:  # a resource the local stack does not build (alarms, topics, ...)
            continue
        if isinstance(value, (str, int, float)):
            outputs[name] = str(value)
    return outputs


def publish_outputs(stack: LocalStack, stack_name: str) -> dict[str, str]:
    """Create CloudFormation stack `stack_name` in moto (already started) with the local stack's outputs."""
    outputs = resolved_outputs(stack)
    template = {
        # A stack needs a resource: the do-nothing one (moto warns that it does not model it, and needs not).
        "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported by moto's CloudFormation.*")
        boto3.client("cloudformation", region_name=REGION).create_stack(StackName=stack_name, TemplateBody=json.dumps(template))
    return outputs
