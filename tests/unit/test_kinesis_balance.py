"""Lease balancing: fair shares within one of even, parents before children, expiry."""

from hypothesis import given
from hypothesis import strategies as st

from worker.sources.kinesis.balance import Seen, expired, plan
from worker.sources.kinesis.leases import SHARD_END, Lease


def simulate(
    shards: int, workers: list[str], rounds: int = 50, late: list[str] = ()
) -> dict[str, str | None]:
    """Every worker runs a round each tick; `late` workers join halfway through."""
    owner: dict[str, str | None] = {f"shard-{i}": None for i in range(shards)}
    counters = dict.fromkeys(owner, 0)
    seen = {w: {} for w in [*workers, *late]}
    for r in range(rounds):
        for w in [*workers, *(late if r >= rounds // 2 else [])]:
            leases = [Lease(s, o, counters[s], None) for s, o in owner.items()]
            for lease, _ in plan(leases, w, seen[w], now=float(r), duration_s=10.0):
                owner[lease.shard_id] = w
                counters[lease.shard_id] += 1
        for s, o in owner.items():  # every owner renews each round
            if o is not None:
                counters[s] += 1
    return owner


@given(shards=st.integers(1, 24), n=st.integers(1, 5), joining=st.integers(0, 3))
def test_workers_converge_within_one_of_even_also_when_some_join_late(shards, n, joining):
    workers = [f"w{i}" for i in range(n)]
    late = [f"late{i}" for i in range(joining)]
    owner = simulate(shards, workers, rounds=80, late=late)
    everyone = workers + late
    counts = [sum(1 for o in owner.values() if o == w) for w in everyone]
    assert None not in owner.values()
    assert max(counts) - min(counts) <= 1


def test_a_third_worker_joining_two_balanced_ones_gets_a_lease():
    owner = simulate(4, ["a", "b"], rounds=40, late=["c"])
    assert sorted(sum(1 for o in owner.values() if o == w) for w in "abc") == [1, 1, 2]


def test_a_new_worker_steals_one_lease_per_round_from_the_most_loaded():
    leases = [Lease(f"s{i}", "w1", 5, None) for i in range(4)]
    seen: dict[str, Seen] = {}
    takes = plan(leases, "w2", seen, now=0.0, duration_s=10.0)
    assert [(lease.owner, why) for lease, why in takes] == [("w1", "steal")]


def test_children_wait_for_every_parent_to_end():
    parent_a = Lease("a", "w1", 3, "4960001")
    parent_b = Lease("b", None, 2, SHARD_END)
    child = Lease("c", None, 0, None, parents=("a", "b"))
    assert plan([parent_a, parent_b, child], "w2", {}, 0, 10) == []
    parent_a = Lease("a", "w1", 4, SHARD_END)
    assert [
        (lease.shard_id, why) for lease, why in plan([parent_a, parent_b, child], "w2", {}, 0, 10)
    ] == [("c", "free")]


def test_a_lease_expires_when_its_counter_stops_moving_for_the_duration():
    seen: dict[str, Seen] = {}
    lease = Lease("s", "w1", 7, None)
    assert not expired(lease, seen, now=0.0, duration_s=10.0)
    assert not expired(lease, seen, now=9.9, duration_s=10.0)
    assert expired(lease, seen, now=10.0, duration_s=10.0)
    renewed = Lease("s", "w1", 8, None)
    assert not expired(renewed, seen, now=11.0, duration_s=10.0)
