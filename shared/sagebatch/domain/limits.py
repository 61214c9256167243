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
# Seconds from the job's creation after which records not yet started end as `expired`. Bounded by the queues'
# MessageRetentionPeriod (14 days, SQS's maximum; template.yaml) minus a day: a shard still queued after the
# retention is deleted by SQS, so the deadline must pass while there is still a day to answer it as `expired`.
MAX_JOB_DEADLINE_S = 1_123_200  # 13 days
# 0: each job's deadline is derived from its input's size (domain/deadline.py), unless its message sets one.
DEFAULT_JOB_DEADLINE_S = 0
