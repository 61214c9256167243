"""The pipeline's own clocks, run in the endpoint's model time.

`sagebatch run --perf --time-scale K` runs the emulated endpoint K times faster than the wall clock. The pipeline's
own periodic work is set in wall seconds: the environments' share heartbeat, checkpoints, stop checks, lease
renewals. Left alone at scale K it would happen K times less often per model second than on AWS, which flatters its
cost and slows its reactions (a newcomer's share takes K times longer to settle). So the local stack divides those
intervals by K too (through their SAGEBATCH_* variables, as the functions read their settings), and the benches
that count requests or measure saturation see what AWS would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sagebatch.settings import Settings

SCALED = ("share_refresh_seconds", "checkpoint_seconds", "stop_check_seconds", "lease_seconds")


def scaled_settings(scale: float) -> dict[str, float]:
    """Those settings' defaults divided by `scale` (each kept within its own bounds)."""
    values = {}
    for name in SCALED:
        field = Settings.model_fields[name]
        floor = next((float(m.ge) for m in field.metadata if getattr(m, "ge", None) is not None), 0.0)
        values[name] = max(floor, float(field.default) / scale)
    return values


@contextmanager
def scaled_clocks(scale: float) -> Iterator[None]:
    """Within the block, the functions' settings read the scaled intervals (unless a variable is set already)."""
    if scale == 1:
        yield
        return
    values = {f"SAGEBATCH_{name.upper()}": str(value) for name, value in scaled_settings(scale).items()}
    values = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)
