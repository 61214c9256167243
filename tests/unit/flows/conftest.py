"""Flow tests run the use cases on the in-memory fakes (sagebatch.fakes): no moto, no network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sagebatch.fakes import FakeAws, FakeEndpointCaller, Pipeline, build_pipeline, fake_settings

MakePipeline = Callable[..., Pipeline]


@pytest.fixture
def make_pipeline() -> Iterator[MakePipeline]:
    """Build a pipeline over fresh fakes: `make_pipeline(endpoint=..., **settings)`; closed after the test."""
    made: list[Pipeline] = []

    def make(endpoint: FakeEndpointCaller | None = None, **settings: Any) -> Pipeline:
        pipeline = build_pipeline(FakeAws.create(fake_settings(**settings), endpoint=endpoint), in_flight=4)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.close()


@pytest.fixture
def pipeline(make_pipeline: MakePipeline) -> Pipeline:
    """Intake, worker and finalizer over fresh fakes with the default settings."""
    return make_pipeline()


@pytest.fixture
def aws(pipeline: Pipeline) -> FakeAws:
    return pipeline.aws
