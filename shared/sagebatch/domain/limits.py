"""The endpoint's limits and the service's defaults, in one place.

The token limits are the JumpStart TGI 1.1 values for Mistral 7B Instruct (seed.md): `MAX_INPUT_LENGTH` 8191 and
`MAX_TOTAL_TOKENS` 8192. The stack's parameters (template.yaml) override them per deployment; everything else
(settings, budget, emulator, endpoint deployment) takes its default from here.
"""

from __future__ import annotations

MAX_INPUT_LENGTH = 8191
MAX_TOTAL_TOKENS = 8192
# TGI's own default would be 20 tokens: far too short for a batch answer (template.yaml DefaultMaxNewTokens).
DEFAULT_MAX_NEW_TOKENS = 512
# TGI's MAX_CONCURRENT_REQUESTS is 128; the workers together stay 8 below it (template.yaml EndpointMaxConcurrency).
ENDPOINT_MAX_CONCURRENCY = 120
# Seconds from the job's creation after which records not yet started end as `expired`. Bounded by the work
# queue's MessageRetentionPeriod (4 days, template.yaml): a shard still queued after that is deleted by SQS,
# so a later deadline could never be reached.
MAX_JOB_DEADLINE_S = 345_600
DEFAULT_JOB_DEADLINE_S = 259_200
