"""Deploy (and delete) the Mistral 7B Instruct endpoint that the stack calls, with the SageMaker Python SDK v2.

The stack budgets every request against its `MaxInputLength` / `MaxTotalTokens` parameters, so the endpoint must be
launched with the same TGI settings; this module builds that environment in one place (`tgi_environment`) and
refuses a container that is not TGI 1.1.0 unless told otherwise (protocol.md 10: JumpStart model versions move to
newer TGI releases whose scheduler and defaults differ).

SDK v2 (`sagemaker<3`, a dev dependency) is used on purpose: v3 dropped `JumpStartModel`, and its `ModelBuilder`
applies the JumpStart spec's env *after* the caller's, so a setting such as MAX_INPUT_LENGTH could be overwritten
(protocol.md 10). `sagemaker` is imported lazily: the Lambda layer does not ship it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sagebatch.domain.limits import MAX_INPUT_LENGTH, MAX_TOTAL_TOKENS

JUMPSTART_MODEL_ID = "huggingface-llm-mistral-7b-instruct"
INSTANCE_TYPE = "ml.g5.2xlarge"
TGI_VERSION_TAG = "tgi1.1.0"


@dataclass(frozen=True)
class EndpointPlan:
    """Everything `deploy` will ask SageMaker for; printable without an AWS account (`--dry-run`)."""

    endpoint_name: str
    role_arn: str | None
    model_id: str = JUMPSTART_MODEL_ID
    model_version: str = "*"
    instance_type: str = INSTANCE_TYPE
    max_input_length: int = MAX_INPUT_LENGTH
    max_total_tokens: int = MAX_TOTAL_TOKENS
    max_concurrent_requests: int = 128

    def environment(self) -> dict[str, str]:
        return tgi_environment(self.max_input_length, self.max_total_tokens, self.max_concurrent_requests)


def tgi_environment(max_input_length: int, max_total_tokens: int, max_concurrent_requests: int = 128) -> dict[str, str]:
    """TGI launcher settings matching the stack's token budget (protocol.md 6).

    TGI requires MAX_INPUT_LENGTH < MAX_TOTAL_TOKENS and MAX_BATCH_PREFILL_TOKENS >= MAX_INPUT_LENGTH (its default,
    4096, would make the launcher refuse 8191). Values are strings: SageMaker passes environment variables as text.
    """
    if not 0 < max_input_length < max_total_tokens:
        raise ValueError(f"need 0 < MAX_INPUT_LENGTH ({max_input_length}) < MAX_TOTAL_TOKENS ({max_total_tokens})")
    return {
        "MAX_INPUT_LENGTH": str(max_input_length),
        "MAX_TOTAL_TOKENS": str(max_total_tokens),
        "MAX_BATCH_PREFILL_TOKENS": str(max(max_input_length, 4096)),
        "MAX_CONCURRENT_REQUESTS": str(max_concurrent_requests),
    }


def check_image(image_uri: str, allow_other_tgi: bool = False) -> None:
    """Refuse a container that is not the TGI 1.1.0 DLC the client, emulator and budget were written against."""
    if TGI_VERSION_TAG not in image_uri and not allow_other_tgi:
        raise ValueError(
            f"the JumpStart model resolves to {image_uri}, not TGI 1.1.0 ({TGI_VERSION_TAG}); pin --model-version "
            "or pass --allow-other-tgi after checking that release's limits and defaults"
        )


def deploy(plan: EndpointPlan, allow_other_tgi: bool = False) -> Any:
    """Create the endpoint (takes several minutes and starts billing) and return the SDK predictor."""
    from sagemaker.jumpstart.model import JumpStartModel

    model = JumpStartModel(
        model_id=plan.model_id,
        model_version=plan.model_version,
        instance_type=plan.instance_type,
        role=plan.role_arn,
        env=plan.environment(),  # SDK v2 keeps caller values over the JumpStart spec's defaults
    )
    check_image(str(model.image_uri), allow_other_tgi)
    return model.deploy(endpoint_name=plan.endpoint_name, initial_instance_count=1, instance_type=plan.instance_type)


def delete(endpoint_name: str, sagemaker_client: Any) -> list[str]:
    """Stop billing: delete the endpoint, then its config, then its model(s). Returns what was deleted."""
    config_name = sagemaker_client.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    config = sagemaker_client.describe_endpoint_config(EndpointConfigName=config_name)
    models = [variant["ModelName"] for variant in config["ProductionVariants"]]
    sagemaker_client.delete_endpoint(EndpointName=endpoint_name)
    sagemaker_client.delete_endpoint_config(EndpointConfigName=config_name)
    for model in models:
        sagemaker_client.delete_model(ModelName=model)
    return [f"endpoint {endpoint_name}", f"endpoint config {config_name}", *(f"model {m}" for m in models)]
