from worker.schedule import MAX_BACKOFF, next_due_after_failure, next_due_after_success


def test_success_returns_to_the_interval():
    assert next_due_after_success(1000, 300) == 1300


def test_rss_ttl_and_retry_after_are_minimum_waits():
    assert next_due_after_success(0, 300, ttl_minutes=60) == 3600
    assert next_due_after_success(0, 300, ttl_minutes=1) == 300
    assert next_due_after_success(0, 300, retry_after=900) == 900


def test_failures_back_off_by_doubling():
    waits = [next_due_after_failure(0, 60, n) for n in (1, 2, 3, 4)]
    assert waits == [120, 240, 480, 960]


def test_backoff_is_capped_at_six_hours_and_never_gives_up():
    assert next_due_after_failure(0, 300, 50) == MAX_BACKOFF == 6 * 3600
    assert next_due_after_failure(0, 300, 10_000) == MAX_BACKOFF


def test_retry_after_is_honoured_on_failure():
    assert next_due_after_failure(0, 60, 1, retry_after=3000) == 3000


def test_jitter_brings_a_poll_early_within_its_interval_never_late():
    from worker.schedule import JITTER

    assert next_due_after_success(1000, 300, jitter=0.0) == 1300
    assert next_due_after_success(1000, 300, jitter=0.999) >= 1000 + 300 * (1 - JITTER)
    assert next_due_after_success(0, 300, ttl_minutes=60, jitter=0.9) == 3600  # minimums hold


def test_feeds_that_start_together_spread_over_their_interval():
    import random

    rng = random.Random(1)
    due = [0.0] * 1000
    for _ in range(30):
        due = [next_due_after_success(d, 300, jitter=rng.random()) for d in due]
    phases = sorted(d % 300 for d in due)
    # spread over most of the interval, not one burst: no 30 s window holds a fifth of them
    assert max(sum(1 for p in phases if s <= p < s + 30) for s in range(0, 300, 10)) < 200
