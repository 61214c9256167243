"""`sagebatch endpoint deploy|describe|delete`: the SageMaker endpoint the stack calls (TGI 1.1.0, Mistral 7B Instruct).

Mount with `app.add_typer(endpoint_app, name="endpoint")`. The commands are plain functions as well, so the former
`deploy-endpoint` / `delete-endpoint` names can be kept as aliases: `app.command("deploy-endpoint")(deploy_command)`.

Exit codes: 0 done (describe: also when it prints warnings), 1 an AWS error, 2 a usage error or a refused plan.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from sagebatch.domain.limits import MAX_INPUT_LENGTH, MAX_TOTAL_TOKENS
from sagebatch.tooling.deploy import (
    ENDPOINT_NAME,
    INSTANCE_TYPE,
    MAX_CONCURRENT_REQUESTS,
    EndpointDescription,
    EndpointPlan,
    StackBudget,
)

if TYPE_CHECKING:
    from boto3.session import Session

endpoint_app = typer.Typer(
    help="Deploy, inspect and delete the SageMaker endpoint (TGI 1.1.0, Mistral 7B Instruct) with the stack's token limits.",
    no_args_is_help=True,
)

EndpointName = Annotated[str, typer.Option("--endpoint-name", help="the stack's EndpointName")]
Region = Annotated[str | None, typer.Option("--region", help="AWS region (default: the AWS configuration's)")]


def _session(region: str | None) -> Session:
    """The boto3 session the commands use (tests replace it with a stubbed one)."""
    import boto3

    return boto3.Session(region_name=region)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"sagebatch endpoint: {message}", err=True)
    raise typer.Exit(code)


def _region(region: str | None, session: Session) -> str:
    resolved = region or session.region_name
    if not resolved:
        _fail("no AWS region: pass --region or set AWS_DEFAULT_REGION", 2)
    return resolved


def _aws_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'AWS said no' (exit 1): botocore's, and sagemaker-core's waiter errors."""
    from botocore.exceptions import BotoCoreError, ClientError
    from sagemaker.core.utils.exceptions import SageMakerCoreError

    return BotoCoreError, ClientError, SageMakerCoreError


@endpoint_app.command("deploy")
def deploy_command(
    endpoint_name: EndpointName = ENDPOINT_NAME,
    role: Annotated[str | None, typer.Option("--role", help="SageMaker execution role ARN (required unless --dry-run)")] = None,
    instance_type: Annotated[str, typer.Option("--instance-type", help="a GPU instance type")] = INSTANCE_TYPE,
    region: Region = None,
    max_input_length: Annotated[int, typer.Option("--max-input-length", help="the stack's MaxInputLength")] = MAX_INPUT_LENGTH,
    max_total_tokens: Annotated[int, typer.Option("--max-total-tokens", help="the stack's MaxTotalTokens")] = MAX_TOTAL_TOKENS,
    max_concurrent_requests: Annotated[
        int, typer.Option("--max-concurrent-requests", help="TGI's; the stack's EndpointMaxConcurrency stays 8 below")
    ] = MAX_CONCURRENT_REQUESTS,
    model_data: Annotated[
        str | None,
        typer.Option(
            "--model-data",
            metavar="S3_PREFIX",
            help="uncompressed weights in S3 (e.g. JumpStart's); default: download from the Hugging Face Hub",
        ),
    ] = None,
    image_uri: Annotated[
        str | None, typer.Option("--image-uri", help="container image (default: the TGI 1.1.0 DLC of the region)")
    ] = None,
    hf_token: Annotated[
        str | None,
        typer.Option(
            "--hf-token",
            envvar="HUGGING_FACE_HUB_TOKEN",
            help="Hub token for the gated mistralai repository (stored in the model's environment)",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan and the TGI environment; call no AWS API")] = False,
    allow_other_tgi: Annotated[bool, typer.Option("--allow-other-tgi", help="accept a container other than TGI 1.1.0")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait until the endpoint is InService")] = True,
) -> None:
    """Create the model, endpoint config and endpoint (several minutes; the endpoint bills by the hour)."""
    from sagebatch.tooling.deploy import check_image, deploy

    session = _session(region)  # reads the AWS configuration only; no API call
    try:
        plan = EndpointPlan(
            endpoint_name,
            role,
            _region(region, session),
            instance_type=instance_type,
            max_input_length=max_input_length,
            max_total_tokens=max_total_tokens,
            max_concurrent_requests=max_concurrent_requests,
            model_data=model_data,
            image_uri=image_uri,
            hf_token=hf_token,
        )
        summary = plan.summary()
        for key, value in summary.items():
            typer.echo(f"{key:<14} {json.dumps(value) if isinstance(value, dict) else value}")
        check_image(summary["image"], allow_other_tgi)
        if dry_run:
            return
        deploy(plan, allow_other_tgi=allow_other_tgi, session=session, wait=wait)
    except ValueError as error:
        _fail(str(error), 2)
    except _aws_errors() as error:
        _fail(f"{error} (if an endpoint was left Failed: sagebatch endpoint delete --endpoint-name {endpoint_name})", 1)
    state = "is in service" if wait else "is being created (sagebatch endpoint describe shows its status)"
    typer.echo(
        f"endpoint {endpoint_name} {state}; it bills by the hour until: sagebatch endpoint delete --endpoint-name {endpoint_name}"
    )


def _print_description(found: EndpointDescription, stack: StackBudget) -> None:
    report: dict[str, Any] = found.as_dict(stack)
    for key in ("endpoint_name", "status", "endpoint_config_name", "model_name", "instance_type", "image"):
        typer.echo(f"{key:<21} {report[key]}")
    typer.echo(f"{'environment':<21} {json.dumps(report['environment'])}")
    parameters = " ".join(f"{k}={v}" for k, v in report["stack_parameters"].items())
    typer.echo(
        f"stack parameters that match this endpoint:\n  --parameter-overrides EndpointName={found.endpoint_name} {parameters}"
    )
    for warning in report["warnings"]:
        typer.echo(f"WARNING: {warning}", err=True)


@endpoint_app.command("describe")
def describe_command(
    endpoint_name: EndpointName = ENDPOINT_NAME,
    region: Region = None,
    max_input_length: Annotated[
        int | None, typer.Option("--max-input-length", help="the stack's MaxInputLength, to check")
    ] = None,
    max_total_tokens: Annotated[
        int | None, typer.Option("--max-total-tokens", help="the stack's MaxTotalTokens, to check")
    ] = None,
    endpoint_max_concurrency: Annotated[
        int | None, typer.Option("--endpoint-max-concurrency", help="the stack's EndpointMaxConcurrency, to check")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (warnings included)")] = False,
) -> None:
    """Read the live endpoint's container environment; print the stack parameters that match it, and warn where the
    given stack values disagree with the endpoint's limits."""
    from sagebatch.tooling.deploy import describe

    session = _session(region)
    stack = StackBudget(max_input_length, max_total_tokens, endpoint_max_concurrency)
    try:
        found = describe(endpoint_name, _region(region, session), session)
    except _aws_errors() as error:
        _fail(str(error), 1)
    if as_json:
        typer.echo(json.dumps(found.as_dict(stack), indent=2))
    else:
        _print_description(found, stack)


@endpoint_app.command("delete")
def delete_command(endpoint_name: EndpointName = ENDPOINT_NAME, region: Region = None) -> None:
    """Delete the endpoint, its endpoint config and its model (billing stops)."""
    from sagebatch.tooling.deploy import delete

    session = _session(region)
    try:
        deleted = delete(endpoint_name, _region(region, session), session)
    except _aws_errors() as error:
        _fail(str(error), 1)
    for item in deleted:
        typer.echo(f"deleted {item}")
