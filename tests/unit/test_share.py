"""SlotShare: an environment's share of the endpoint's concurrency follows how many environments have work, and
what the others still hold."""

from __future__ import annotations

from sagebatch.endpoint.limiter import AdaptiveLimiter, InMemoryLimiterStore, LimiterSettings, Permit, Signal
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


def hold(environment: SlotShare, requests: int) -> list[Permit]:
    """Put `requests` short requests in flight through the environment's limiter."""
    limiter = AdaptiveLimiter(environment.store)
    return [limiter.acquire(100, timeout_s=0) for _ in range(requests)]


def slots(*environments: SlotShare) -> tuple[int, ...]:
    return tuple(environment.store.settings.max_inflight for environment in environments)


def test_an_environment_alone_gets_every_slot() -> None:
    # Given one environment with work
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    alone = share(registry, clock, "a")
    # When it refreshes its share; Then its limiter may hold all 120 requests
    assert alone.refresh() == 1
    assert slots(alone) == (120,)


def test_a_newcomer_grows_only_as_the_others_drain_to_their_share() -> None:
    # Given one environment running alone with 120 requests in flight, and a second one arriving
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    first, second = share(registry, clock, "a"), share(registry, clock, "b")
    first.refresh()
    in_flight = hold(first, 120)
    second.refresh()
    # Then the newcomer takes (almost) nothing while the first still holds every slot
    assert slots(second) == (1,)
    # When the first sees it and shrinks, but its requests are still in flight
    first.refresh()
    second.refresh()
    # Then the first's share is halved, and the second still waits: together they never pass the cap
    assert slots(first, second) == (60, 1)
    # When 60 of the first's requests finish
    for permit in in_flight[:60]:
        permit.release(Signal.IGNORE)
    first.refresh()
    second.refresh()
    # Then each holds half
    assert slots(first, second) == (60, 60)


def test_two_environments_starting_together_split_the_endpoint() -> None:
    # Given two environments that register one after the other, nothing in flight yet
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    first, second = share(registry, clock, "a"), share(registry, clock, "b")
    first.refresh()
    second.refresh()
    first.refresh()
    second.refresh()
    # Then they hold half each, never more than the cap between them
    assert slots(first, second) == (60, 60)


def test_the_share_grows_back_when_the_other_environment_leaves() -> None:
    # Given two environments sharing the endpoint
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    first, second = share(registry, clock, "a"), share(registry, clock, "b")
    for _ in range(2):
        first.refresh()
        second.refresh()
    # When the second runs out of work and leaves
    second.leave()
    # Then the first takes every slot at its next refresh
    assert first.refresh() == 1
    assert slots(first) == (120,)


def test_an_environment_that_stops_renewing_lapses() -> None:
    # Given two environments, one of which crashed (no more heartbeats)
    registry, clock = InMemoryEnvironmentRegistry(), Clock()
    first, crashed = share(registry, clock, "a"), share(registry, clock, "b")
    first.refresh()
    crashed.refresh()
    # When three intervals pass; Then the survivor counts itself alone
    clock.now += 31
    assert first.refresh() == 1
