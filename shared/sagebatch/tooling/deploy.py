"""Deploy, describe and delete the Mistral 7B Instruct endpoint that the stack calls, with sagemaker-core's resources.

The stack budgets every request against its `MaxInputLength` / `MaxTotalTokens` parameters, so the endpoint must be
launched with the same TGI settings; `EndpointPlan.environment` builds that environment in one place, and
`EndpointDescription` reads it back from a live endpoint to say which stack parameters match it.

`sagemaker.core.resources` (the `sagemaker-core` 2.x distribution, which `sagemaker` 3.x is built on) creates the
Model, EndpointConfig and Endpoint with an explicit container: the TGI 1.1.0 DLC for the region, taken from the
SDK's bundled image config (no network), and exactly our environment. Nothing merges a JumpStart spec into it, so
the v3 `ModelBuilder` caveat (the spec's env applied after the caller's, protocol.md 10) cannot arise.
What the installed library really does is written down in docs/endpoint.md. `sagemaker.core` is imported lazily:
it takes over a second to import and the Lambda layer does not ship it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sagebatch.domain.limits import ENDPOINT_MAX_CONCURRENCY, MAX_INPUT_LENGTH, MAX_TOTAL_TOKENS

if TYPE_CHECKING:
    from boto3.session import Session

ENDPOINT_NAME = "mistral-7b-instruct"
INSTANCE_TYPE = "ml.g5.2xlarge"
HF_MODEL_ID = "mistralai/Mistral-7B-Instruct-v0.1"
MODEL_DIR = "/opt/ml/model"  # where SageMaker puts ModelDataSource files; TGI loads a local path as HF_MODEL_ID
TGI_VERSION = "1.1.0"
TGI_VERSION_TAG = "tgi1.1.0"
MAX_CONCURRENT_REQUESTS = 128  # TGI's default, which JumpStart keeps (seed.md 4)
# The stack's workers together stay this far below MAX_CONCURRENT_REQUESTS (template.yaml EndpointMaxConcurrency).
CONCURRENCY_HEADROOM = MAX_CONCURRENT_REQUESTS - ENDPOINT_MAX_CONCURRENCY
# TGI 1.1.0 launcher defaults (protocol.md 6): what the endpoint enforces when its environment omits a setting.
TGI_DEFAULTS = {"MAX_INPUT_LENGTH": 1024, "MAX_TOTAL_TOKENS": 2048, "MAX_CONCURRENT_REQUESTS": 128}
HF_TOKEN_VARIABLE = "HUGGING_FACE_HUB_TOKEN"  # the name TGI 1.1 reads; mistralai repositories are gated on the Hub
# TGI downloads (or reads from /opt/ml/model) and loads ~14.5 GB of fp16 weights before /ping answers.
STARTUP_HEALTH_CHECK_TIMEOUT_S = 900
VARIANT_NAME = "AllTraffic"


def tgi_image_uri(region: str) -> str:
    """The TGI 1.1.0 DLC for `region`, from the JSON image config bundled with sagemaker-core (no AWS call).

    The registry account differs by region (763104351884 in most, others e.g. in af-south-1 or eu-south-1), so the
    URI is looked up rather than formatted.
    """
    from sagemaker.core import image_uris

    return str(image_uris.retrieve("huggingface-llm", region=region, version=TGI_VERSION, instance_type=INSTANCE_TYPE))


def gpu_count(instance_type: str, region: str) -> int:
    """GPUs of `instance_type` (SM_NUM_GPUS: the DLC starts one TGI shard per GPU), from sagemaker-core's table."""
    from sagemaker.core import instance_types_gpu_info

    info = instance_types_gpu_info.retrieve(region).get(instance_type) or instance_types_gpu_info.retrieve("us-east-1").get(
        instance_type
    )
    if not info:
        raise ValueError(
            f"{instance_type} is not a GPU instance type the SageMaker SDK knows; TGI needs a GPU (e.g. {INSTANCE_TYPE})"
        )
    return int(info["Count"])


def tgi_environment(
    max_input_length: int, max_total_tokens: int, max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS
) -> dict[str, str]:
    """TGI launcher settings matching the stack's token budget (protocol.md 6).

    TGI requires MAX_INPUT_LENGTH < MAX_TOTAL_TOKENS and MAX_BATCH_PREFILL_TOKENS >= MAX_INPUT_LENGTH (its default,
    4096, would make the launcher refuse 8191). Values are strings: SageMaker passes environment variables as text.
    """
    if not 0 < max_input_length < max_total_tokens:
        raise ValueError(f"need 0 < MAX_INPUT_LENGTH ({max_input_length}) < MAX_TOTAL_TOKENS ({max_total_tokens})")
    if max_concurrent_requests <= CONCURRENCY_HEADROOM:
        raise ValueError(
            f"MAX_CONCURRENT_REQUESTS ({max_concurrent_requests}) must exceed {CONCURRENCY_HEADROOM}, the stack's headroom"
        )
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
            f"{image_uri} is not TGI 1.1.0 ({TGI_VERSION_TAG}); newer TGI releases change the max_new_tokens default, "
            "the /invocations schema and the scheduler. Pass --allow-other-tgi after checking that release's limits"
        )


def masked(environment: dict[str, str]) -> dict[str, str]:
    """The environment fit to print: the Hub token is replaced."""
    return {k: ("****" if k == HF_TOKEN_VARIABLE else v) for k, v in sorted(environment.items())}


@dataclass(frozen=True)
class EndpointPlan:
    """Everything `deploy` will ask SageMaker for; printable without an AWS call (`--dry-run`)."""

    endpoint_name: str
    role_arn: str | None
    region: str
    instance_type: str = INSTANCE_TYPE
    max_input_length: int = MAX_INPUT_LENGTH
    max_total_tokens: int = MAX_TOTAL_TOKENS
    max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS
    model_data: str | None = None  # S3 prefix of uncompressed weights (e.g. JumpStart's prepack); None: from the Hub
    image_uri: str | None = None  # None: the SDK's TGI 1.1.0 DLC for the region
    hf_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.model_data is not None and not self.model_data.startswith("s3://"):
            raise ValueError(f"--model-data must be an s3:// prefix, not {self.model_data!r}")

    def image(self) -> str:
        return self.image_uri or tgi_image_uri(self.region)

    def environment(self) -> dict[str, str]:
        env = tgi_environment(self.max_input_length, self.max_total_tokens, self.max_concurrent_requests)
        env["HF_MODEL_ID"] = MODEL_DIR if self.model_data else HF_MODEL_ID
        env["SM_NUM_GPUS"] = str(gpu_count(self.instance_type, self.region))
        if self.hf_token:
            env[HF_TOKEN_VARIABLE] = self.hf_token
        return env

    def resource_name(self, now: datetime | None = None) -> str:
        """Name of the model and of the endpoint config (one each; SageMaker names are at most 63 characters)."""
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
        return f"{self.endpoint_name[:47]}-{stamp}"

    def summary(self) -> dict[str, Any]:
        gated = "" if self.hf_token else "; the repository is gated: pass --hf-token or --model-data"
        return {
            "endpoint_name": self.endpoint_name,
            "region": self.region,
            "role_arn": self.role_arn,
            "instance_type": self.instance_type,
            "image": self.image(),
            "model_data": self.model_data or f"(none: TGI downloads {HF_MODEL_ID} from the Hugging Face Hub{gated})",
            "environment": masked(self.environment()),
        }


def deploy(
    plan: EndpointPlan,
    allow_other_tgi: bool = False,
    session: Session | None = None,
    wait: bool = True,
    now: datetime | None = None,
) -> Any:
    """Create model, endpoint config and endpoint (several minutes; starts billing); return the `Endpoint` resource.

    If the endpoint config or the endpoint cannot be created, what was created before is deleted again.
    """
    import boto3
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model
    from sagemaker.core.shapes import ContainerDefinition, ModelDataSource, ProductionVariant, S3ModelDataSource

    image = plan.image()
    check_image(image, allow_other_tgi)
    if not plan.role_arn:
        raise ValueError("a SageMaker execution role ARN is needed (--role)")
    session = session or boto3.Session(region_name=plan.region)
    where: dict[str, Any] = {"session": session, "region": plan.region}
    name = plan.resource_name(now)
    source = (
        ModelDataSource(
            s3_data_source=S3ModelDataSource(s3_uri=plan.model_data, s3_data_type="S3Prefix", compression_type="None")
        )
        if plan.model_data
        else None
    )
    container = ContainerDefinition(
        image=image, environment=plan.environment(), **({"model_data_source": source} if source else {})
    )
    variant = ProductionVariant(
        variant_name=VARIANT_NAME,
        model_name=name,
        instance_type=plan.instance_type,
        initial_instance_count=1,
        container_startup_health_check_timeout_in_seconds=STARTUP_HEALTH_CHECK_TIMEOUT_S,
    )
    created: list[Any] = []
    try:
        created.append(Model.create(model_name=name, primary_container=container, execution_role_arn=plan.role_arn, **where))
        created.append(EndpointConfig.create(endpoint_config_name=name, production_variants=[variant], **where))
        endpoint = Endpoint.create(endpoint_name=plan.endpoint_name, endpoint_config_name=name, **where)
    except Exception:
        for resource in reversed(created):
            with contextlib.suppress(Exception):  # the creation error is the one to report
                resource.delete()
        raise
    if wait:
        endpoint.wait_for_status("InService", poll=30)
    return endpoint


@dataclass(frozen=True)
class StackBudget:
    """The token and concurrency budget of a stack (its parameters); None where unknown."""

    max_input_length: int | None = None
    max_total_tokens: int | None = None
    endpoint_max_concurrency: int | None = None


@dataclass(frozen=True)
class EndpointDescription:
    """A live endpoint's config, model and container, reduced to what the stack's budget depends on."""

    endpoint_name: str
    status: str
    endpoint_config_name: str
    model_name: str
    instance_type: str | None
    image: str
    environment: dict[str, str]

    def limit(self, variable: str) -> int:
        """The endpoint's TGI setting: its environment's value, else TGI 1.1.0's default."""
        return int(self.environment.get(variable, TGI_DEFAULTS[variable]))

    def stack_parameters(self) -> dict[str, int]:
        """The stack parameters that match this endpoint."""
        return {
            "MaxInputLength": self.limit("MAX_INPUT_LENGTH"),
            "MaxTotalTokens": self.limit("MAX_TOTAL_TOKENS"),
            "EndpointMaxConcurrency": self.limit("MAX_CONCURRENT_REQUESTS") - CONCURRENCY_HEADROOM,
        }

    def warnings(self, stack: StackBudget | None = None) -> list[str]:
        """Where the endpoint and the stack's budget disagree (or the container is not TGI 1.1.0)."""
        found = [] if TGI_VERSION_TAG in self.image else [f"the container {self.image} is not TGI 1.1.0 ({TGI_VERSION_TAG})"]
        if stack is None:
            return found
        for parameter, variable, value in (
            ("MaxInputLength", "MAX_INPUT_LENGTH", stack.max_input_length),
            ("MaxTotalTokens", "MAX_TOTAL_TOKENS", stack.max_total_tokens),
        ):
            limit = self.limit(variable)
            if value is not None and value > limit:
                found.append(
                    f"stack {parameter}={value} exceeds the endpoint's {variable}={limit}: records the stack admits "
                    f"will be refused by TGI (validation error); set {parameter}={limit}"
                )
            elif value is not None and value < limit:
                found.append(
                    f"stack {parameter}={value} is below the endpoint's {variable}={limit}: the stack refuses "
                    f"requests the endpoint would serve; set {parameter}={limit}"
                )
        most = self.stack_parameters()["EndpointMaxConcurrency"]
        if stack.endpoint_max_concurrency is not None and stack.endpoint_max_concurrency > most:
            found.append(
                f"stack EndpointMaxConcurrency={stack.endpoint_max_concurrency} leaves less than {CONCURRENCY_HEADROOM} of the "
                f"endpoint's MAX_CONCURRENT_REQUESTS={self.limit('MAX_CONCURRENT_REQUESTS')} free: expect 429 "
                f"'Model is overloaded'; set EndpointMaxConcurrency={most}"
            )
        return found

    def as_dict(self, stack: StackBudget | None = None) -> dict[str, Any]:
        return {
            **asdict(self),
            "environment": masked(self.environment),
            "stack_parameters": self.stack_parameters(),
            "warnings": self.warnings(stack),
        }


def _value(attribute: Any) -> Any:
    """A sagemaker-core attribute, with its `Unassigned()` placeholder (a field absent from the answer) as None."""
    from sagemaker.core.utils.utils import Unassigned

    return None if isinstance(attribute, Unassigned) else attribute


def _resources(endpoint_name: str, region: str, session: Session | None) -> tuple[Any, Any, list[Any]]:
    """The endpoint, its endpoint config and the models of its production variants."""
    import boto3
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model

    where: dict[str, Any] = {"session": session or boto3.Session(region_name=region), "region": region}
    endpoint = Endpoint.get(endpoint_name=endpoint_name, **where)
    config = EndpointConfig.get(endpoint_config_name=endpoint.endpoint_config_name, **where)
    models = [Model.get(model_name=variant.model_name, **where) for variant in config.production_variants]
    return endpoint, config, models


def describe(endpoint_name: str, region: str, session: Session | None = None) -> EndpointDescription:
    """Read the live endpoint's config → model → container environment (DescribeEndpoint, …Config, …Model)."""
    endpoint, config, models = _resources(endpoint_name, region, session)
    model = models[0]
    container = _value(model.primary_container) or _value(model.containers)[0]
    return EndpointDescription(
        endpoint_name=endpoint_name,
        status=str(endpoint.endpoint_status),
        endpoint_config_name=str(config.endpoint_config_name),
        model_name=str(model.model_name),
        instance_type=_value(config.production_variants[0].instance_type),
        image=str(_value(container.image) or ""),
        environment=dict(_value(container.environment) or {}),
    )


def delete(endpoint_name: str, region: str, session: Session | None = None) -> list[str]:
    """Stop billing: delete the endpoint, then its config, then its model(s). Returns what was deleted."""
    endpoint, config, models = _resources(endpoint_name, region, session)
    endpoint.delete()
    config.delete()
    for model in models:
        model.delete()
    return [
        f"endpoint {endpoint_name}",
        f"endpoint config {config.endpoint_config_name}",
        *(f"model {m.model_name}" for m in models),
    ]
