import random

from worker.backoff import Backoff


def test_ceiling_doubles_from_min_and_caps_at_max():
    b = Backoff(100, 1000)
    assert [b.ceiling_s(a) for a in (1, 2, 3, 4, 5, 50)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_delays_are_jittered_within_min_and_ceiling():
    b = Backoff(100, 30_000)
    rng = random.Random(1)
    delays = [b.delay_s(4, rng) for _ in range(200)]
    assert all(0.1 <= d <= 0.8 for d in delays)
    assert len(set(delays)) > 150  # spread, not one synchronised value
