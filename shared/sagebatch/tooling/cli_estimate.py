"""`sagebatch estimate FILE`: calls, tokens, duration and cost before anything runs (the model: tooling/estimate.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sagebatch.tooling.cli_args import ExitCode, UsageProblem, describe_duration, parse_fit, parse_params


@dataclass(frozen=True)
class EstimateOptions:
    file: Path
    endpoint_instances: int = 1
    params: tuple[str, ...] = ()
    fit: str | None = None
    output_tokens: str = "max"
    local: bool = False
    instance_hourly_price: float | None = None
    as_json: bool = False


def output_assumption(text: str) -> Literal["max", "emulator"] | int:
    """`max`, `emulator`, or a positive number of tokens per call."""
    value = text.strip().lower()
    if value == "max":
        return "max"
    if value == "emulator":
        return "emulator"
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise UsageProblem(f"--output-tokens takes max, emulator or a number of tokens per call, not {text!r}")


def estimate_command(options: EstimateOptions) -> int:
    from sagebatch.domain.parameters import Parameters
    from sagebatch.domain.records import FitSettings
    from sagebatch.settings import Settings
    from sagebatch.tooling.estimate import estimate

    if options.endpoint_instances < 1:
        raise UsageProblem(f"--endpoint-instances must be at least 1, not {options.endpoint_instances}")
    if options.instance_hourly_price is not None and options.instance_hourly_price < 0:
        raise UsageProblem("--instance-hourly-price cannot be negative")
    assumption = output_assumption(options.output_tokens)
    parameters = Parameters.model_validate(parse_params(list(options.params)))
    fit_values = parse_fit(options.fit)
    fit = FitSettings.model_validate(fit_values) if fit_values is not None else None
    try:
        data = options.file.read_bytes()
    except OSError as error:
        raise UsageProblem(f"cannot read {str(options.file)!r}: {error.strerror or error}") from None
    # The stack's settings as the functions would see them: SAGEBATCH_* variables, else the template's defaults.
    settings = Settings(table_name="-", bucket_name="-")
    result = estimate(
        data,
        settings,
        parameters,
        fit,
        assumption,
        options.endpoint_instances,
        options.local,
        options.instance_hourly_price,
    )
    if options.as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        _print_table(result.as_dict(), options)
    return ExitCode.OK


def _print_table(values: dict, options: EstimateOptions) -> None:
    from rich.console import Console
    from rich.table import Table

    cost = values["cost"]
    failed = sum(values["failed_without_call"].values())
    where = (
        "`sagebatch run` on this machine (one worker environment)"
        if options.local
        else f"the deployed stack ({values['environments']} worker environments)"
    )
    table = Table(title=f"estimate: {options.file.name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "records",
        f"{values['records']:,} in {values['shards']:,} shards ({values['input_format']})"
        + (f", {failed:,} fail before any call ({_kinds(values['failed_without_call'])})" if failed else ""),
    )
    table.add_row("endpoint calls", f"{values['endpoint_calls']:,}")
    table.add_row("input tokens", f"{values['input_tokens']:,}")
    table.add_row("output tokens", f"{values['output_tokens']:,.0f} ({_assumption(values['output_assumption'])})")
    table.add_row(
        "in flight",
        f"up to {values['max_in_flight']} calls (of them up to {values['long_in_flight']} over 2,048 "
        f"tokens), {values['mean_in_flight']:.1f} on average, on {values['endpoint_instances']} endpoint "
        f"instance(s): {where}",
    )
    table.add_row(
        "duration",
        f"{describe_duration(values['duration_s'])} of endpoint time "
        f"({values['output_tokens_per_s']:,.0f} output tokens/s); the job adds intake and finalize",
    )
    table.add_row("endpoint seconds", f"{values['endpoint_seconds']:,.1f} (the job's share of the endpoint)")
    table.add_row("endpoint cost", f"${cost['endpoint_usd']:,.4f} at ${cost['endpoint_hourly_price']:g}/h")
    table.add_row(
        "plumbing cost",
        f"${cost['plumbing_usd']:,.4f} (Lambda ${cost['plumbing']['lambda']:,.4f}, "
        f"DynamoDB ${cost['plumbing']['dynamodb']:,.4f}, S3 ${cost['plumbing']['s3']:,.4f}, other "
        f"${cost['plumbing']['sqs'] + cost['plumbing']['eventbridge'] + cost['plumbing']['cloudwatch_logs']:,.4f})",
    )
    table.add_row("total", f"${cost['total_usd']:,.4f} ({cost['region']} list prices of {cost['prices_as_of']})")
    Console(file=sys.stdout, soft_wrap=False).print(table)


def _kinds(failed: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count:,}" for kind, count in sorted(failed.items()))


def _assumption(value: str) -> str:
    if value == "max":
        return "every call to its max_new_tokens: an upper bound"
    if value == "emulator":
        return "the local emulator's answer lengths"
    return f"{value} per call, at most max_new_tokens"
