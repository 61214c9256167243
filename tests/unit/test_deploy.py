"""The endpoint lifecycle on sagemaker-core (`sagebatch endpoint deploy|describe|delete`).

The SageMaker API is botocore's Stubber on the very client sagemaker-core uses, so each request is captured exactly
as it would leave for AWS, and nothing goes on the network. (moto cannot stand in here: its DescribeModel answers
`VpcConfig: {}`, which sagemaker-core's `Model` refuses, and its endpoint configs reject ml.g5 instance types.)
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
import typer
from botocore.client import BaseClient
from botocore.stub import Stubber
from typer.testing import CliRunner, Result

from sagebatch.tooling import cli_endpoint
from sagebatch.tooling.cli_endpoint import endpoint_app
from sagebatch.tooling.deploy import (
    EndpointDescription,
    EndpointPlan,
    StackBudget,
    check_image,
    gpu_count,
    tgi_environment,
    tgi_image_uri,
)
from sagebatch.tooling.local.template import load_template
from tests.conftest import ROOT

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/sagemaker-execution"
TGI_110 = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.0.1-tgi1.1.0-gpu-py39-cu118-ubuntu20.04"
)
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
RESOURCE_NAME = re.compile(r"^mistral-7b-instruct-\d{8}-\d{6}$")
JUMPSTART_WEIGHTS = (
    "s3://jumpstart-cache-prod-us-east-1/huggingface-llm/huggingface-llm-mistral-7b-instruct/artifacts/inference-prepack/v1.0.0/"
)


@dataclass
class SageMakerApi:
    """The stubbed SageMaker API: queue answers with `answer`, read what was sent in `requests`."""

    session: boto3.Session
    stubber: Stubber
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def answer(self, operation: str, response: dict[str, Any] | None = None) -> None:
        self.stubber.add_response(operation, response or {})

    def fail(self, operation: str, code: str) -> None:
        self.stubber.add_client_error(
            operation, service_error_code=code, service_message=f"{operation} refused", http_status_code=400
        )

    def request(self, operation: str) -> dict[str, Any]:
        (sent,) = [params for name, params in self.requests if name == operation]
        return sent

    def operations(self) -> list[str]:
        return [name for name, _ in self.requests]


@pytest.fixture
def sagemaker_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[SageMakerApi]:
    from sagemaker.core.utils.utils import SageMakerClient

    session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    # sagemaker-core caches one client per (session, region): this is the one its resources will call.
    client = SageMakerClient(session=session, region_name=REGION).get_client("sagemaker")
    with Stubber(client) as stubber:
        api = SageMakerApi(session, stubber)

        def capture(params: dict[str, Any], model: Any, **_: Any) -> None:
            api.requests.append((model.name, copy.deepcopy(params)))

        client.meta.events.register("before-parameter-build.sagemaker", capture)
        monkeypatch.setattr(cli_endpoint, "_session", lambda region: session)
        yield api
        stubber.assert_no_pending_responses()


def mounted() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(endpoint_app, name="endpoint")  # as the main CLI mounts it
    return app


def sagemaker(*args: str) -> Result:
    return CliRunner().invoke(mounted(), ["endpoint", *args])


def endpoint_answer(status: str, config_name: str = "mistral-7b-instruct-20240102-030405") -> dict[str, Any]:
    return {
        "EndpointName": "mistral-7b-instruct",
        "EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/mistral-7b-instruct",
        "EndpointConfigName": config_name,
        "EndpointStatus": status,
        "CreationTime": WHEN,
        "LastModifiedTime": WHEN,
    }


def config_answer(name: str = "mistral-7b-instruct-20240102-030405", instance_type: str = "ml.g5.2xlarge") -> dict[str, Any]:
    return {
        "EndpointConfigName": name,
        "EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/{name}",
        "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": instance_type, "InitialInstanceCount": 1}
        ],
        "CreationTime": WHEN,
    }


def model_answer(
    environment: dict[str, str], name: str = "mistral-7b-instruct-20240102-030405", image: str = TGI_110
) -> dict[str, Any]:
    return {
        "ModelName": name,
        "ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/{name}",
        "CreationTime": WHEN,
        "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": image, "Environment": environment},
    }


def a_live_endpoint(api: SageMakerApi, environment: dict[str, str], image: str = TGI_110) -> None:
    api.answer("describe_endpoint", endpoint_answer("InService"))
    api.answer("describe_endpoint_config", config_answer())
    api.answer("describe_model", model_answer(environment, image=image))


def a_successful_creation(api: SageMakerApi, environment: dict[str, str]) -> None:
    api.answer("create_model", {"ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/m"})
    api.answer("describe_model", model_answer(environment))
    api.answer("create_endpoint_config", {"EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/c"})
    api.answer("describe_endpoint_config", config_answer())
    api.answer("create_endpoint", {"EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/mistral-7b-instruct"})
    api.answer("describe_endpoint", endpoint_answer("Creating"))
    api.answer("describe_endpoint", endpoint_answer("InService"))  # the first poll of wait_for_status


JUMPSTART_LIKE = {
    "MAX_INPUT_LENGTH": "8191",
    "MAX_TOTAL_TOKENS": "8192",
    "MAX_BATCH_PREFILL_TOKENS": "8191",
    "MAX_CONCURRENT_REQUESTS": "128",
    "HF_MODEL_ID": "mistralai/Mistral-7B-Instruct-v0.1",
    "SM_NUM_GPUS": "1",
}


# --- the plan -------------------------------------------------------------------------------------------------------


def test_the_default_plan_launches_tgi_with_the_stacks_token_limits() -> None:
    # Given the stack's default MaxInputLength / MaxTotalTokens / EndpointMaxConcurrency
    params = load_template(ROOT / "template.yaml")["Parameters"]
    # When the default endpoint plan builds its TGI environment
    env = EndpointPlan(endpoint_name="mistral-7b-instruct", role_arn=None, region=REGION).environment()
    # Then the endpoint enforces the same limits sagebatch budgets against, with 8 requests of headroom
    assert env["MAX_INPUT_LENGTH"] == str(params["MaxInputLength"]["Default"])
    assert env["MAX_TOTAL_TOKENS"] == str(params["MaxTotalTokens"]["Default"])
    assert int(env["MAX_CONCURRENT_REQUESTS"]) - 8 == params["EndpointMaxConcurrency"]["Default"]


def test_the_prefill_budget_is_raised_to_admit_the_longest_prompt() -> None:
    # Given an 8191-token input limit (TGI's launcher refuses MAX_BATCH_PREFILL_TOKENS below it; its default is 4096)
    env = tgi_environment(8191, 8192)
    # Then the prefill budget admits one full-length prompt
    assert int(env["MAX_BATCH_PREFILL_TOKENS"]) >= 8191


def test_an_input_limit_not_below_the_total_is_refused() -> None:
    # Given limits TGI's launcher would refuse; Then the plan is refused before anything is deployed
    with pytest.raises(ValueError, match="MAX_INPUT_LENGTH"):
        tgi_environment(8192, 8192)


def test_only_the_tgi_1_1_0_container_is_accepted_by_default() -> None:
    # Given the TGI 1.1.0 DLC and a newer TGI image
    newer = TGI_110.replace("tgi1.1.0", "tgi2.0.2")
    # Then the first passes, the second is refused unless explicitly allowed
    check_image(TGI_110)
    with pytest.raises(ValueError, match=r"not TGI 1\.1\.0"):
        check_image(newer)
    check_image(newer, allow_other_tgi=True)


def test_the_image_is_the_sdks_tgi_1_1_0_dlc_for_the_region() -> None:
    # Given the image config bundled with sagemaker-core; When the URI is resolved for two regions
    # Then us-east-1 gets the DLC account's image, and a region served from another account gets that account's
    assert tgi_image_uri("us-east-1") == TGI_110
    assert tgi_image_uri("eu-south-1") == TGI_110.replace("763104351884", "692866216735").replace("us-east-1", "eu-south-1")


def test_sm_num_gpus_follows_the_instance_type_and_a_cpu_instance_is_refused() -> None:
    # Given the SDK's GPU table; Then g5.2xlarge has one GPU, g5.12xlarge four, and a CPU type is refused
    assert gpu_count("ml.g5.2xlarge", REGION) == 1
    assert gpu_count("ml.g5.12xlarge", REGION) == 4
    with pytest.raises(ValueError, match="not a GPU instance type"):
        gpu_count("ml.m5.xlarge", REGION)


# --- deploy ---------------------------------------------------------------------------------------------------------


def test_deploy_sends_createmodel_with_the_tgi_1_1_0_image_and_the_full_environment(sagemaker_api: SageMakerApi) -> None:
    # Given SageMaker accepting each creation
    a_successful_creation(sagemaker_api, JUMPSTART_LIKE)

    # When the endpoint is deployed with the defaults
    result = sagemaker("deploy", "--role", ROLE, "--region", REGION)

    # Then CreateModel carried the TGI 1.1.0 DLC and exactly the environment the stack's budget needs
    assert result.exit_code == 0, result.output
    model = sagemaker_api.request("CreateModel")
    assert model["PrimaryContainer"] == {
        "Image": TGI_110,
        "Environment": {
            "MAX_INPUT_LENGTH": "8191",
            "MAX_TOTAL_TOKENS": "8192",
            "MAX_BATCH_PREFILL_TOKENS": "8191",
            "MAX_CONCURRENT_REQUESTS": "128",
            "HF_MODEL_ID": "mistralai/Mistral-7B-Instruct-v0.1",
            "SM_NUM_GPUS": "1",
        },
    }
    assert model["ExecutionRoleArn"] == ROLE and RESOURCE_NAME.match(model["ModelName"])
    # And the config hosts that model on one ml.g5.2xlarge, and the endpoint uses that config
    assert sagemaker_api.request("CreateEndpointConfig") == {
        "EndpointConfigName": model["ModelName"],
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": model["ModelName"],
                "InstanceType": "ml.g5.2xlarge",
                "InitialInstanceCount": 1,
                "ContainerStartupHealthCheckTimeoutInSeconds": 900,
            }
        ],
    }
    assert sagemaker_api.request("CreateEndpoint") == {
        "EndpointName": "mistral-7b-instruct",
        "EndpointConfigName": model["ModelName"],
    }
    assert "is in service" in result.stdout


def test_deploy_from_s3_weights_points_tgi_at_the_model_directory(sagemaker_api: SageMakerApi) -> None:
    # Given weights in S3 (JumpStart's uncompressed prepack) and a smaller context
    a_successful_creation(sagemaker_api, JUMPSTART_LIKE)

    # When the endpoint is deployed from them
    result = sagemaker(
        "deploy",
        "--role",
        ROLE,
        "--region",
        REGION,
        "--model-data",
        JUMPSTART_WEIGHTS,
        "--max-input-length",
        "4095",
        "--max-total-tokens",
        "4096",
        "--max-concurrent-requests",
        "64",
    )

    # Then SageMaker copies the prefix to /opt/ml/model and TGI loads it from there, with the requested limits
    assert result.exit_code == 0, result.output
    container = sagemaker_api.request("CreateModel")["PrimaryContainer"]
    assert container["ModelDataSource"] == {
        "S3DataSource": {"S3Uri": JUMPSTART_WEIGHTS, "S3DataType": "S3Prefix", "CompressionType": "None"}
    }
    assert container["Environment"] == {
        "MAX_INPUT_LENGTH": "4095",
        "MAX_TOTAL_TOKENS": "4096",
        "MAX_BATCH_PREFILL_TOKENS": "4096",
        "MAX_CONCURRENT_REQUESTS": "64",
        "HF_MODEL_ID": "/opt/ml/model",
        "SM_NUM_GPUS": "1",
    }


def test_a_hub_token_reaches_the_container_but_is_never_printed(sagemaker_api: SageMakerApi) -> None:
    # Given a Hugging Face token in the deployer's environment (the mistralai repositories are gated)
    a_successful_creation(sagemaker_api, JUMPSTART_LIKE)

    # When the endpoint is deployed
    result = CliRunner().invoke(
        mounted(), ["endpoint", "deploy", "--role", ROLE, "--region", REGION], env={"HUGGING_FACE_HUB_TOKEN": "hf_secret"}
    )

    # Then TGI gets it, and the printed plan masks it
    assert result.exit_code == 0, result.output
    assert sagemaker_api.request("CreateModel")["PrimaryContainer"]["Environment"]["HUGGING_FACE_HUB_TOKEN"] == "hf_secret"
    assert "hf_secret" not in result.output and '"HUGGING_FACE_HUB_TOKEN": "****"' in result.stdout


def test_a_failed_endpoint_creation_removes_the_model_and_config_it_made(sagemaker_api: SageMakerApi) -> None:
    # Given an account whose endpoint quota is used up
    api = sagemaker_api
    api.answer("create_model", {"ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/m"})
    api.answer("describe_model", model_answer(JUMPSTART_LIKE))
    api.answer("create_endpoint_config", {"EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/c"})
    api.answer("describe_endpoint_config", config_answer())
    api.fail("create_endpoint", "ResourceLimitExceeded")
    api.answer("delete_endpoint_config")
    api.answer("delete_model")

    # When a deployment is attempted
    result = sagemaker("deploy", "--role", ROLE, "--region", REGION)

    # Then it exits 1 with SageMaker's error, and nothing it created is left behind
    assert result.exit_code == 1
    assert "ResourceLimitExceeded" in result.stderr
    assert api.operations()[-2:] == ["DeleteEndpointConfig", "DeleteModel"]


def test_dry_run_prints_the_plan_without_calling_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given any AWS API call recorded (and refused)
    calls: list[str] = []

    def no_call(self: BaseClient, operation: str, params: dict[str, Any]) -> None:
        calls.append(operation)
        raise AssertionError(f"AWS call {operation} during a dry run")

    monkeypatch.setattr(BaseClient, "_make_api_call", no_call)

    # When the deploy command runs with --dry-run, a smaller context and no role
    result = sagemaker("deploy", "--dry-run", "--region", REGION, "--max-input-length", "4095", "--max-total-tokens", "4096")

    # Then it exits 0, shows the image and TGI environment it would launch with, and called nothing
    assert result.exit_code == 0, result.output
    assert calls == []
    assert TGI_110 in result.stdout
    assert '"MAX_INPUT_LENGTH": "4095"' in result.stdout and '"MAX_TOTAL_TOKENS": "4096"' in result.stdout


def test_another_tgi_image_is_refused_unless_allowed() -> None:
    # Given a newer TGI image
    newer = TGI_110.replace("tgi1.1.0", "tgi2.0.2")
    # When it is planned without and with --allow-other-tgi
    refused = sagemaker("deploy", "--dry-run", "--region", REGION, "--image-uri", newer)
    allowed = sagemaker("deploy", "--dry-run", "--region", REGION, "--image-uri", newer, "--allow-other-tgi")
    # Then the first is a refused plan (exit 2), the second goes through
    assert refused.exit_code == 2 and "not TGI 1.1.0" in refused.stderr
    assert allowed.exit_code == 0, allowed.output


def test_deploy_without_a_role_is_refused(sagemaker_api: SageMakerApi) -> None:
    # Given no --role; When deploying for real; Then it is refused before any AWS call
    result = sagemaker("deploy", "--region", REGION)
    assert result.exit_code == 2 and "--role" in result.stderr
    assert sagemaker_api.requests == []


# --- describe -------------------------------------------------------------------------------------------------------


def test_describe_prints_the_stack_parameters_that_match_the_endpoint(sagemaker_api: SageMakerApi) -> None:
    # Given a live endpoint launched with JumpStart's limits
    a_live_endpoint(sagemaker_api, JUMPSTART_LIKE)

    # When it is described, with stack values that agree
    result = sagemaker("describe", "--region", REGION, "--max-input-length", "8191", "--max-total-tokens", "8192")

    # Then it read endpoint → config → model, and prints the matching parameters without warnings
    assert result.exit_code == 0, result.output
    assert sagemaker_api.operations() == ["DescribeEndpoint", "DescribeEndpointConfig", "DescribeModel"]
    assert sagemaker_api.request("DescribeModel") == {"ModelName": "mistral-7b-instruct-20240102-030405"}
    assert "MaxInputLength=8191 MaxTotalTokens=8192 EndpointMaxConcurrency=120" in result.stdout
    assert "WARNING" not in result.output


def test_describe_warns_when_the_stack_budget_disagrees_with_the_endpoint(sagemaker_api: SageMakerApi) -> None:
    # Given an endpoint launched with a 4k context and 64 concurrent requests
    a_live_endpoint(
        sagemaker_api,
        {
            **JUMPSTART_LIKE,
            "MAX_INPUT_LENGTH": "4095",
            "MAX_TOTAL_TOKENS": "4096",
            "MAX_BATCH_PREFILL_TOKENS": "4096",
            "MAX_CONCURRENT_REQUESTS": "64",
        },
    )

    # When it is described against the stack's default budget
    result = sagemaker(
        "describe",
        "--region",
        REGION,
        "--max-input-length",
        "8191",
        "--max-total-tokens",
        "8192",
        "--endpoint-max-concurrency",
        "120",
    )

    # Then the parameters to set are printed, and each disagreement is a warning
    assert result.exit_code == 0, result.output
    assert "MaxInputLength=4095 MaxTotalTokens=4096 EndpointMaxConcurrency=56" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 3
    assert "MaxInputLength=8191 exceeds the endpoint's MAX_INPUT_LENGTH=4095" in warnings[0]
    assert "MaxTotalTokens=8192 exceeds the endpoint's MAX_TOTAL_TOKENS=4096" in warnings[1]
    assert "EndpointMaxConcurrency=120" in warnings[2] and "429" in warnings[2]


def test_describe_json_gives_the_parameters_and_warnings_to_scripts(sagemaker_api: SageMakerApi) -> None:
    # Given a live endpoint whose container is not TGI 1.1.0
    a_live_endpoint(sagemaker_api, JUMPSTART_LIKE, image=TGI_110.replace("tgi1.1.0", "tgi2.0.2"))

    # When it is described as JSON, with a stack input limit below the endpoint's
    result = sagemaker("describe", "--region", REGION, "--json", "--max-input-length", "4095")

    # Then one JSON object carries the parameters and both warnings
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stack_parameters"] == {"MaxInputLength": 8191, "MaxTotalTokens": 8192, "EndpointMaxConcurrency": 120}
    assert report["instance_type"] == "ml.g5.2xlarge" and report["status"] == "InService"
    assert "not TGI 1.1.0" in report["warnings"][0] and "is below the endpoint's MAX_INPUT_LENGTH=8191" in report["warnings"][1]


def test_an_environment_without_tgi_settings_means_tgis_own_defaults() -> None:
    # Given an endpoint whose container sets no TGI limit (TGI 1.1.0 then enforces 1024 / 2048 / 128)
    found = EndpointDescription("e", "InService", "c", "m", "ml.g5.2xlarge", TGI_110, {"HF_MODEL_ID": "x"})
    # Then the matching stack parameters are those defaults, and the stack's 8k budget is flagged
    assert found.stack_parameters() == {"MaxInputLength": 1024, "MaxTotalTokens": 2048, "EndpointMaxConcurrency": 120}
    assert len(found.warnings(StackBudget(8191, 8192, 120))) == 2


# --- delete ---------------------------------------------------------------------------------------------------------


def test_delete_removes_the_endpoint_its_config_and_its_model(sagemaker_api: SageMakerApi) -> None:
    # Given a deployed endpoint
    a_live_endpoint(sagemaker_api, JUMPSTART_LIKE)
    for operation in ("delete_endpoint", "delete_endpoint_config", "delete_model"):
        sagemaker_api.answer(operation)

    # When it is deleted
    result = sagemaker("delete", "--region", REGION)

    # Then the endpoint goes first (billing stops), then its config, then its model
    assert result.exit_code == 0, result.output
    name = "mistral-7b-instruct-20240102-030405"
    assert sagemaker_api.requests[3:] == [
        ("DeleteEndpoint", {"EndpointName": "mistral-7b-instruct"}),
        ("DeleteEndpointConfig", {"EndpointConfigName": name}),
        ("DeleteModel", {"ModelName": name}),
    ]
    assert result.stdout.splitlines() == [
        "deleted endpoint mistral-7b-instruct",
        f"deleted endpoint config {name}",
        f"deleted model {name}",
    ]


def test_deleting_a_missing_endpoint_exits_1_with_sagemakers_message(sagemaker_api: SageMakerApi) -> None:
    # Given no such endpoint
    sagemaker_api.fail("describe_endpoint", "ValidationException")
    # When it is deleted; Then the command exits 1 and deletes nothing
    result = sagemaker("delete", "--region", REGION, "--endpoint-name", "gone")
    assert result.exit_code == 1 and "ValidationException" in result.stderr
    assert sagemaker_api.operations() == ["DescribeEndpoint"]
