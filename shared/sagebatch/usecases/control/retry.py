"""Retry: a child job over the records of a finished job that did not succeed."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from sagebatch.domain.job import FINISHED, Job, JobStatus
from sagebatch.domain.results import ResultLine

# A retry takes every record that did not succeed. Cancelled and expired records never ran; failed ones may
# have failed for a reason that is gone (an endpoint outage) or one that is not (invalid JSON fails again).
RETRIED_STATUSES = ("failed", "cancelled", "expired")
# Jobs whose results.jsonl is complete and may be retried. A FAILED job failed as a whole (unreadable or
# disallowed input, invalid message): it has no results to retry, it must be submitted again.
RETRYABLE_JOB_STATUSES = (JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.EXPIRED)


class RetryRefused(Exception):
    """The job named by a retry request cannot be retried (the message says why)."""


def retryable(parent: Job | None, parent_id: str) -> Job:
    """`parent`, if a retry of it may start; else RetryRefused with the reason."""
    if parent is None:
        raise RetryRefused(f"no job {parent_id} to retry")
    if parent.status not in FINISHED:
        raise RetryRefused(f"job {parent_id} is {parent.status}: retry it once it has finished (or cancel it first)")
    if parent.status not in RETRYABLE_JOB_STATUSES:
        raise RetryRefused(f"job {parent_id} is {parent.status} as a whole ({parent.error}); submit it again instead of retrying")
    return parent


@dataclass
class Lineage:
    """For each line of a retry job's input (in order): its line in the parent and the id its result inherits."""

    parent_lines: array[int] = field(default_factory=lambda: array("q"))
    default_ids: array[int] = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.parent_lines)

    def add(self, result: ResultLine) -> None:
        self.parent_lines.append(result.line)
        # An id that is a number may be the parent's default (the original line number), which only this
        # message can carry on; a string id is the record's own, which the child reads from the record again.
        self.default_ids.append(result.id if isinstance(result.id, int) and not isinstance(result.id, bool) else result.line)

    def window(self, first_line: int, lines: int) -> tuple[list[int], list[int]]:
        """The entries of child lines first_line .. first_line + lines - 1."""
        start = first_line - 1
        return self.parent_lines[start : start + lines].tolist(), self.default_ids[start : start + lines].tolist()


def retry_lineage(parent_results: Iterable[ResultLine]) -> Lineage:
    """The parent's lines a retry runs again: every record that did not succeed, in line order."""
    lineage = Lineage()
    for result in parent_results:
        if result.status in RETRIED_STATUSES:
            lineage.add(result)
    return lineage
