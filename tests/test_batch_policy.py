"""The batch-closing decision is pure: tested with explicit times, no clock, no sleeping."""

from __future__ import annotations

import random

import pytest

from gateway.serving.batch_policy import BatchingConfig, decide, fits

GREEDY = BatchingConfig(max_batch_size=8, max_queue_delay_s=0.002, max_concurrent_batches=2, greedy=True)
PATIENT = BatchingConfig(max_batch_size=8, max_queue_delay_s=0.002, max_concurrent_batches=1, greedy=False)


def test_empty_queue_waits_for_an_event() -> None:
    d = decide(queued_rows=0, first_arrival=None, now=1.0, in_flight=0, config=GREEDY)
    assert not d.close and d.wait_s is None


def test_greedy_runs_a_lone_request_at_once_when_idle() -> None:
    assert decide(queued_rows=1, first_arrival=1.0, now=1.0, in_flight=0, config=GREEDY).close


def test_busy_second_slot_waits_for_the_delay_from_first_arrival() -> None:
    d = decide(queued_rows=3, first_arrival=1.0, now=1.0005, in_flight=1, config=GREEDY)
    assert not d.close
    assert d.wait_s == pytest.approx(0.0015)
    assert decide(queued_rows=3, first_arrival=1.0, now=1.002, in_flight=1, config=GREEDY).close


def test_full_batch_closes_without_waiting() -> None:
    assert decide(queued_rows=8, first_arrival=1.0, now=1.0, in_flight=1, config=GREEDY).close


def test_no_free_slot_waits_for_a_batch_to_end_even_when_full() -> None:
    d = decide(queued_rows=100, first_arrival=0.0, now=5.0, in_flight=2, config=GREEDY)
    assert not d.close and d.wait_s is None


def test_non_greedy_waits_even_when_idle() -> None:
    d = decide(queued_rows=1, first_arrival=1.0, now=1.001, in_flight=0, config=PATIENT)
    assert not d.close and d.wait_s == pytest.approx(0.001)
    assert decide(queued_rows=1, first_arrival=1.0, now=1.0021, in_flight=0, config=PATIENT).close


def test_unbatched_model_closes_one_request_at_a_time() -> None:
    cfg = BatchingConfig(max_batch_size=0, greedy=False)
    assert decide(queued_rows=1, first_arrival=1.0, now=1.0, in_flight=0, config=cfg).close
    assert taken([1, 1, 1], 0) == 1


@pytest.mark.parametrize(
    ("rows", "limit", "count"),
    [([1, 1, 1], 8, 3), ([4, 4, 1], 8, 2), ([5, 4], 8, 1), ([20, 1], 8, 1), ([], 8, 0), ([3, 2, 3, 1], 8, 3)],
)
def test_a_batch_fills_up_to_the_limit_in_order(rows: list[int], limit: int, count: int) -> None:
    assert taken(rows, limit) == count


def taken(rows: list[int], limit: int) -> int:
    """How many queued requests the batcher takes, walking the queue with `fits` as it does."""
    count, total = 0, 0
    for r in rows:
        if not fits(total, count, r, limit):
            break
        count, total = count + 1, total + r
    return count


def test_a_batch_is_never_over_the_limit_unless_alone_and_never_leaves_room_unused() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        rows = [rng.randint(1, 9) for _ in range(rng.randint(0, 12))]
        limit = rng.choice([0, 1, 4, 8, 16, 64])
        count = taken(rows, limit)
        assert count == min(len(rows), 1) or 1 < count <= len(rows), (rows, limit)
        if count > 1:
            assert limit > 0 and sum(rows[:count]) <= limit, (rows, limit)
        if count < len(rows) and count:
            assert limit <= 0 or sum(rows[: count + 1]) > limit, (rows, limit)


def test_inline_gate_opens_after_a_run_of_quick_batches_and_closes_on_a_slow_one() -> None:
    from gateway.serving.batch_policy import InlineGate

    gate = InlineGate(max_s=0.001, warmup=3)
    for _ in range(2):
        gate.observe(0.0005)
    assert not gate.inline, "too few quick batches yet"
    gate.observe(0.001)  # at the limit counts as quick
    assert gate.inline
    gate.observe(0.002)  # a slow batch: back to threads for another warm-up
    assert not gate.inline
    for _ in range(3):
        gate.observe(0.0001)
    assert gate.inline
    assert gate.observe(0.006) is False  # a stray (over 5x the limit): back to threads, but not for good
    assert not gate.inline and not gate.disabled
    for _ in range(3):
        gate.observe(0.0001)
    assert gate.inline


def test_inline_gate_keeps_a_model_that_strays_again_and_again_off_the_loop_for_good() -> None:
    """One stray batch says little about the model: a pause of the machine (the hypervisor taking the CPU, a
    full collection) lands in the thread's CPU time too, and a quick model sent to threads for good loses a
    tenth of its req/s for the rest of the process's life. A model that strays again soon can stall."""
    from gateway.serving.batch_policy import InlineGate

    gate = InlineGate(max_s=0.001, warmup=3, strays=3, stray_window=1_000)
    for _ in range(2):
        for _ in range(3):
            assert gate.observe(0.0001) is False
        assert gate.inline
        assert gate.observe(0.01) is False
        assert not gate.disabled
    for _ in range(3):
        gate.observe(0.0001)
    assert gate.observe(0.01) is True  # the third stray within the window: it just closed for good
    for _ in range(100):
        assert gate.observe(0.0001) is False
    assert not gate.inline and gate.disabled


def test_inline_gate_closes_for_good_at_once_on_a_stall() -> None:
    from gateway.serving.batch_policy import InlineGate

    gate = InlineGate(max_s=0.001, warmup=3)
    for _ in range(3):
        gate.observe(0.0001)
    assert gate.observe(0.2) is True  # 200 times the limit: no machine pauses that long in a batch
    assert gate.disabled


def test_inline_gate_forgets_strays_older_than_its_window() -> None:
    from gateway.serving.batch_policy import InlineGate

    gate = InlineGate(max_s=0.001, warmup=3, strays=2, stray_window=100)
    gate.observe(0.01)
    for _ in range(100):  # the first stray falls out of the window
        gate.observe(0.0001)
    gate.observe(0.01)
    assert not gate.disabled
    for _ in range(3):
        gate.observe(0.0001)
    assert gate.inline
    gate.observe(0.01)  # two within 100 batches
    assert gate.disabled and not gate.inline


def test_inline_gate_off_when_the_limit_is_zero() -> None:
    from gateway.serving.batch_policy import InlineGate

    gate = InlineGate(max_s=0.0, warmup=1)
    for _ in range(10):
        gate.observe(0.0)
    assert not gate.inline
