"""One settings model, read from the environment once per cold start."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sagebatch.domain.cost import DEFAULT_ENDPOINT_HOURLY_PRICE
from sagebatch.domain.limits import (
    DEFAULT_JOB_DEADLINE_S,
    DEFAULT_MAX_NEW_TOKENS,
    ENDPOINT_MAX_CONCURRENCY,
    MAX_INPUT_LENGTH,
    MAX_JOB_DEADLINE_S,
    MAX_TOTAL_TOKENS,
)
from sagebatch.domain.time_budget import DEFAULT_CALL_TIME_RESERVE_S

# s3://bucket/prefix, as template.yaml's AllowedInputLocations pattern allows it (the prefix may be empty).
# No wildcards: the template turns each entry into an IAM resource ARN.
_LOCATION = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<prefix>[^,*?\s]*)$")


class InputLocation(BaseModel):
    """An S3 location job messages may read from: a bucket and a plain key prefix (as IAM matches it)."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> InputLocation:
        match = _LOCATION.match(uri)
        if match is None:
            raise ValueError(f"allowed input location {uri!r} is not s3://bucket/prefix (no spaces or wildcards)")
        return cls(bucket=match["bucket"], prefix=match["prefix"])

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def contains(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)


class Settings(BaseSettings):
    """Everything a handler needs; the template sets these as environment variables."""

    model_config = SettingsConfigDict(env_prefix="SAGEBATCH_", frozen=True, extra="ignore")

    table_name: str
    bucket_name: str
    work_queue_url: str = ""
    finalize_queue_url: str = ""
    endpoint_name: str = "mistral-7b-instruct"
    # Set only for the local stack and tests: the emulator's loopback URL.
    endpoint_url: str | None = None

    max_input_length: int = Field(MAX_INPUT_LENGTH, ge=1)
    max_total_tokens: int = Field(MAX_TOTAL_TOKENS, ge=2)
    default_max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)
    endpoint_max_concurrency: int = Field(ENDPOINT_MAX_CONCURRENCY, ge=1)
    worker_max_concurrency: int = Field(2, ge=1)
    # The endpoint's price per hour, all its instances (template.yaml's EndpointHourlyPrice): the manifest's cost.
    endpoint_hourly_price: float = Field(DEFAULT_ENDPOINT_HOURLY_PRICE, ge=0)

    # Lines per work message of a small job; a larger job's shards grow with its input so that it has at most a few
    # thousand (domain/sharding.py: up to 256 lines), and a shard holds at most `shard_bytes` of input unless its
    # one line is larger. 1 MiB keeps a shard of 8k-token prompts (~32 KB each) at ~32 lines. 64: a shard's fixed
    # requests (~13) spread over 64 records; a small job still fills the endpoint (one environment holds all of it).
    shard_records: int = Field(64, ge=1, le=1000)
    shard_bytes: int = Field(1024 * 1024, ge=1024)
    # Intake's shard messages go out from this many threads (SendMessageBatch takes ~20 ms); its progress is saved
    # on the job every `intake_checkpoint_shards` shards or `intake_checkpoint_seconds`, whichever comes first, and
    # when its invocation runs short of time it sends `resume_intake` for the job to its own queue.
    intake_queue_url: str = ""
    intake_send_threads: int = Field(8, ge=1, le=64)
    intake_checkpoint_shards: int = Field(1000, ge=1)
    intake_checkpoint_seconds: float = Field(20.0, ge=0)
    max_line_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    job_ttl_days: int = Field(30, ge=1)
    # A job's deadline when its message sets none (template.yaml's JobDeadlineSeconds); 0 derives it from the input's
    # size (domain/deadline.py: 1 to 13 days). At most 13 days leaves a day before the queues' 14-day retention
    # deletes shards still queued: they are answered as `expired` first.
    default_job_deadline_s: int = Field(DEFAULT_JOB_DEADLINE_S, ge=0, le=MAX_JOB_DEADLINE_S)
    # How stale a worker's view of "was this job cancelled?" may be: one read per job per execution environment per
    # interval (usecases/control/stop.py), at the price of up to this long of extra calls after a cancel.
    stop_check_seconds: float = Field(10.0, ge=0)
    # A shard's (or a job's enqueueing) lease: renewed every third of this while the work runs, so a crashed
    # holder's claim lapses within it and a redelivery takes over (sagebatch.usecases.lease). A crashed invocation's
    # messages come back only after the queue's visibility timeout (90 min), so a few minutes costs nothing.
    lease_seconds: float = Field(180.0, ge=1)
    # How often a running shard's answers are checkpointed (usecases/parts.py): a crash costs at most this long of
    # that shard's answers; 0 checkpoints every answer (one S3 PUT each). A shard of short prompts is done within
    # 30 s at saturation, so it is written once, as its part.
    checkpoint_seconds: float = Field(30.0, ge=0)
    # The worst case of one endpoint call (SageMaker's 60 s limit, plus a margin to store the answer and hand the
    # shard back): a worker starts a call, waits for a slot or backs off only while more than this is left of its
    # invocation, so it returns before Lambda's timeout (sagebatch.domain.time_budget). Tests scale it down.
    call_time_reserve_s: float = Field(DEFAULT_CALL_TIME_RESERVE_S, ge=0)
    # A worker invocation takes more shards from the work queue itself while it has room (usecases/batch.py), at
    # most this many at a time; the visibility timeout it takes them with is the queue's own (template.yaml).
    self_feed: bool = True
    max_shards_in_flight: int = Field(16, ge=1)
    # How often a worker environment renews its registration (every half of this; a tenth while its share is
    # changing) and re-divides the endpoint's concurrency with the others (sagebatch.endpoint.share). The endpoint
    # stays full whatever it is: it only sets how soon a newcomer gets its half.
    share_refresh_seconds: float = Field(30.0, gt=0)
    work_visibility_timeout_s: int = Field(5400, ge=30)

    # Where job messages may point their `input`, besides this stack's own bucket (always allowed).
    # The environment holds template.yaml's AllowedInputLocations verbatim: comma-separated s3://bucket/prefix.
    allowed_input_locations: Annotated[tuple[InputLocation, ...], NoDecode] = ()

    # Job state-change events (README "Notifications"): every status change goes to this EventBridge bus; finished
    # jobs are also published to the SNS topic when one is set (template.yaml's EventBusName, NotificationTopicArn).
    event_bus_name: str = Field("default", min_length=1)
    notification_topic_arn: str | None = None

    @field_validator("notification_topic_arn", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_input_locations", mode="before")
    @classmethod
    def _parse_locations(cls, value: Any) -> Any:
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else value
        return tuple(
            item if isinstance(item, InputLocation) else InputLocation.parse(str(item).strip())
            for item in items
            if isinstance(item, InputLocation) or str(item).strip()
        )

    def allows_input(self, bucket: str, key: str) -> bool:
        """May a job read s3://bucket/key? Anything in the stack's bucket, else only under an allowed location."""
        return bucket == self.bucket_name or any(location.contains(bucket, key) for location in self.allowed_input_locations)

    @property
    def allowed_input_uris(self) -> list[str]:
        return [f"s3://{self.bucket_name}/"] + [location.uri for location in self.allowed_input_locations]

    @property
    def calls_in_flight_per_worker(self) -> int:
        """Each worker's share of the endpoint's concurrency (at least one call)."""
        return max(1, self.endpoint_max_concurrency // self.worker_max_concurrency)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
