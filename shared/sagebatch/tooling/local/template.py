"""Read template.yaml, the single source of truth for the stack, including its intrinsic-function tags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns `!Ref X` into {"Ref": "X"} and `!GetAtt A.B` into {"Fn::GetAtt": ["A", "B"]}."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_CfnLoader)


def default_template_path() -> Path:
    """template.yaml at the repository root (the package lives in <root>/shared/sagebatch)."""
    return Path(__file__).resolve().parents[4] / "template.yaml"


@dataclass(frozen=True)
class SqsTrigger:
    """A function's SQS event source, as the template declares it."""

    function: str
    handler_path: Path
    queue: str  # logical id of the queue
    batch_size: int
    max_concurrency: int | None
    batching_window_s: float = 0.0  # MaximumBatchingWindowInSeconds (0, the default for standard queues)


def sqs_triggers(template: dict[str, Any], root: Path, resolve: Callable[[Any], Any] = lambda value: value) -> list[SqsTrigger]:
    """Every SQS event source of the template's functions; `resolve` turns a `Ref` to a parameter into its value."""
    triggers = []
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        module, _, _ = props["Handler"].rpartition(".")
        handler_path = root / props["CodeUri"] / f"{module}.py"
        for event in props.get("Events", {}).values():
            if event["Type"] != "SQS":
                continue
            ep = event["Properties"]
            queue = ep["Queue"]["Fn::GetAtt"][0]
            concurrency = resolve((ep.get("ScalingConfig") or {}).get("MaximumConcurrency"))
            triggers.append(
                SqsTrigger(
                    name,
                    handler_path,
                    queue,
                    int(resolve(ep.get("BatchSize", 10))),
                    int(concurrency) if isinstance(concurrency, int | str) else None,  # None: an unresolved Ref
                    float(resolve(ep.get("MaximumBatchingWindowInSeconds", 0))),
                )
            )
    return triggers
