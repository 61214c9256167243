"""Endpoint deployment helpers: the TGI environment matches the stack's budget; teardown removes what billing needs."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from sagebatch.tooling.deploy import EndpointPlan, check_image, delete, tgi_environment
from sagebatch.tooling.local.template import load_template
from tests.conftest import ROOT

TGI_110 = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.0.1-tgi1.1.0-gpu-py39-cu118-ubuntu20.04"


def test_the_default_plan_launches_tgi_with_the_stacks_token_limits():
    # Given the stack's default MaxInputLength / MaxTotalTokens
    params = load_template(ROOT / "template.yaml")["Parameters"]
    # When the default endpoint plan builds its TGI environment
    env = EndpointPlan(endpoint_name="mistral-7b-instruct", role_arn=None).environment()
    # Then the endpoint enforces the same limits sagebatch budgets against
    assert env["MAX_INPUT_LENGTH"] == str(params["MaxInputLength"]["Default"])
    assert env["MAX_TOTAL_TOKENS"] == str(params["MaxTotalTokens"]["Default"])


def test_the_prefill_budget_is_raised_to_admit_the_longest_prompt():
    # Given an 8191-token input limit (TGI's launcher refuses MAX_BATCH_PREFILL_TOKENS below it; its default is 4096)
    env = tgi_environment(8191, 8192)
    # Then the prefill budget admits one full-length prompt
    assert int(env["MAX_BATCH_PREFILL_TOKENS"]) >= 8191


def test_an_input_limit_not_below_the_total_is_refused():
    # Given limits TGI's launcher would refuse; Then the plan is refused before anything is deployed
    with pytest.raises(ValueError, match="MAX_INPUT_LENGTH"):
        tgi_environment(8192, 8192)


def test_only_the_tgi_1_1_0_container_is_accepted_by_default():
    # Given the TGI 1.1.0 DLC and a newer TGI image
    newer = TGI_110.replace("tgi1.1.0", "tgi2.0.2")
    # Then the first passes, the second is refused unless explicitly allowed
    check_image(TGI_110)
    with pytest.raises(ValueError, match="not TGI 1.1.0"):
        check_image(newer)
    check_image(newer, allow_other_tgi=True)


def test_delete_removes_the_endpoint_its_config_and_its_model():
    # Given a deployed endpoint (moto)
    with mock_aws():
        sm = boto3.client("sagemaker", region_name="us-east-1")
        sm.create_model(ModelName="mistral-model", ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
                        PrimaryContainer={"Image": TGI_110})
        # moto's instance-type list predates g5; the type does not matter for teardown
        sm.create_endpoint_config(EndpointConfigName="mistral-config", ProductionVariants=[
            {"VariantName": "primary", "ModelName": "mistral-model", "InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1}])
        sm.create_endpoint(EndpointName="mistral-7b-instruct", EndpointConfigName="mistral-config")

        # When it is deleted
        deleted = delete("mistral-7b-instruct", sm)

        # Then nothing that bills is left
        assert deleted == ["endpoint mistral-7b-instruct", "endpoint config mistral-config", "model mistral-model"]
        assert sm.list_endpoints()["Endpoints"] == []
        assert sm.list_endpoint_configs()["EndpointConfigs"] == []
        assert sm.list_models()["Models"] == []


def test_the_deploy_command_dry_run_prints_the_plan_without_calling_aws(capsys):
    # Given the CLI with --dry-run and a smaller context than the default
    from sagebatch.tooling.cli import main

    # When it runs
    code = main(["deploy-endpoint", "--dry-run", "--max-input-length", "4095", "--max-total-tokens", "4096"])

    # Then it exits 0 and shows the TGI environment it would launch with
    printed = capsys.readouterr().out
    assert code == 0
    assert "'MAX_INPUT_LENGTH': '4095'" in printed and "'MAX_TOTAL_TOKENS': '4096'" in printed
