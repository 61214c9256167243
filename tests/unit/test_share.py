"""SlotShare: an environment's share of the endpoint's concurrency follows how many environments have work."""

from __future__ import annotations

from sagebatch.endpoint.limiter import InMemoryLimiterStore, LimiterSettings
from sagebatch.endpoint.share import SlotShare
from sagebatch.fakes import InMemoryEnvironmentRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def share(registry: InMemoryEnvironmentRegistry, clock: Clock, name: str) -> SlotShare:
    store = InMemoryLimiterStore(LimiterSettings.for_endpoint(120, margin=0, sharers=2))
    return SlotShare(registry, store, 120, refresh_s=10, clock=clock, environment=name)


def test_an_environment_alone_gets_every_slot() -> None:
    # Given one environment with work
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    alone = share(registry, clock, "a")
    # When it refreshes its share; Then its limiter may hold all 120 requests
    assert alone.refresh() == 1
    assert alone.store.settings.max_inflight == 120


def test_a_newcomer_waits_one_interval_before_taking_its_half() -> None:
    # Given one environment running alone, and a second one arriving
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    first, second = share(registry, clock, "a"), share(registry, clock, "b")
    first.refresh()
    second.refresh()
    # Then the newcomer starts with the margin below TGI's limit, so the two never exceed 128 together
    assert second.store.settings.max_inflight == 8
    assert first.store.settings.max_inflight + second.store.settings.max_inflight <= 128
    # When the first refreshes (it shrinks to its half) and an interval passes for the second
    first.refresh()
    clock.now += 10
    first.refresh()
    second.refresh()
    # Then each holds half
    assert (first.store.settings.max_inflight, second.store.settings.max_inflight) == (60, 60)


def test_the_share_grows_back_when_the_other_environment_leaves() -> None:
    # Given two environments sharing the endpoint
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    first, second = share(registry, clock, "a"), share(registry, clock, "b")
    first.refresh()
    second.refresh()
    clock.now += 10
    first.refresh()
    # When the second runs out of work and leaves
    second.leave()
    # Then the first takes every slot at its next refresh
    assert first.refresh() == 1
    assert first.store.settings.max_inflight == 120


def test_an_environment_that_stops_renewing_lapses() -> None:
    # Given two environments, one of which crashed (no more heartbeats)
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    first, crashed = share(registry, clock, "a"), share(registry, clock, "b")
    first.refresh()
    crashed.refresh()
    # When three intervals pass; Then the survivor counts itself alone
    clock.now += 31
    assert first.refresh() == 1
