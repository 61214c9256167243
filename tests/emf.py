"""Reading CloudWatch EMF documents (what Powertools Metrics prints) back from captured stdout."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sagebatch.lambdas import metrics as names


@dataclass
class Emf:
    """The EMF documents a run printed, by metric name."""

    documents: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, stdout: str) -> Emf:
        documents = []
        for line in stdout.splitlines():
            if line.startswith("{") and '"_aws"' in line:
                documents.append(json.loads(line))
        return cls(documents)

    def values(self, name: str, function: str = names.WORKER, **dimensions: str) -> list[float]:
        """Every value of `name` in documents of `function` whose extra dimensions are exactly `dimensions`."""
        found: list[float] = []
        for doc in self.documents:
            (directive,) = doc["_aws"]["CloudWatchMetrics"]
            keys = set(directive["Dimensions"][0])
            extra = {k: doc[k] for k in keys - {"service", "function"}}
            if doc.get("function") != function or extra != dimensions:
                continue
            if name in {m["Name"] for m in directive["Metrics"]}:
                value = doc[name]
                found += value if isinstance(value, list) else [value]
        return found

    def total(self, name: str, function: str = names.WORKER, **dimensions: str) -> float:
        return sum(self.values(name, function, **dimensions))

    def unit(self, name: str) -> str:
        return next(
            m["Unit"] for doc in self.documents for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"] if m["Name"] == name
        )
