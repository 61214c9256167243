"""Job control: cancel, deadlines, retry of what did not succeed, and how a job is reported.

Stopping never bypasses the normal path to the end of a job. A stop only changes what a worker does with a
record it has not started yet: it stores a `cancelled` / `expired` result instead of calling the endpoint.
Shards still complete and count once, the one caller that wins RUNNING -> FINALIZING still sends the one
finalize message, and results.jsonl still has one line per input line. The stop reason lives on the job item
and is written once (conditionally), so every worker and the finalizer agree on it.
"""
