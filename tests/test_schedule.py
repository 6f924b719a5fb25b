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
