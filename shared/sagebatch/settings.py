"""One settings model, read from the environment once per cold start."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    max_input_length: int = Field(8191, ge=1)
    max_total_tokens: int = Field(8192, ge=2)
    default_max_new_tokens: int = Field(512, ge=1)
    endpoint_max_concurrency: int = Field(120, ge=1)
    worker_max_concurrency: int = Field(8, ge=1)

    # Records per work message: small enough that one Lambda finishes a shard well inside
    # its timeout, large enough that a million-record job is ~30k messages, not a million.
    shard_records: int = Field(32, ge=1, le=1000)
    shard_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_line_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    job_ttl_days: int = Field(30, ge=1)

    @property
    def calls_in_flight_per_worker(self) -> int:
        """Each worker's share of the endpoint's concurrency (at least one call)."""
        return max(1, self.endpoint_max_concurrency // self.worker_max_concurrency)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]
