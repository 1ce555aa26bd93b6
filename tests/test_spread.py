"""Which runtime process takes a worker's next batch (`gateway.serving.spread`): pure, no clock, no sleeping."""

from __future__ import annotations

from collections import Counter

from gateway.serving.spread import Load, Spread, least_loaded

UP = [True, True, True]


def test_the_fewest_rows_in_flight_win_then_the_fewest_batches() -> None:
    assert least_loaded([Load(8, 1), Load(2, 2), Load(5, 1)], UP, after=0) == 1
    # Equal rows: the one with fewer batches (one big batch runs sooner done than two small ones queued).
    assert least_loaded([Load(4, 2), Load(4, 1), Load(9, 1)], UP, after=1) == 1


def test_ties_go_round_robin_after_the_last_choice() -> None:
    idle = [Load(), Load(), Load()]
    assert least_loaded(idle, UP, after=2) == 0
    assert least_loaded(idle, UP, after=0) == 1
    assert least_loaded(idle, UP, after=1) == 2
    # Among a tie of two, the next after `after` in turn, skipping the busier one.
    assert least_loaded([Load(1, 1), Load(3, 1), Load(1, 1)], UP, after=0) == 2
    assert least_loaded([Load(1, 1), Load(3, 1), Load(1, 1)], UP, after=2) == 0


def test_an_unavailable_member_is_skipped_and_none_when_all_are() -> None:
    assert least_loaded([Load(), Load(9, 3), Load()], [False, True, False], after=0) == 1
    assert least_loaded([Load(), Load()], [False, False], after=0) is None


def test_an_idle_worker_uses_every_member_in_turn() -> None:
    spread = Spread(3)
    chosen = []
    for _ in range(6):  # one batch at a time: each finishes before the next starts
        member = spread.choose(UP)
        assert member is not None
        spread.started(member, 4)
        spread.finished(member, 4)
        chosen.append(member)
    assert chosen == [0, 1, 2, 0, 1, 2]


def test_a_busy_member_gets_no_batch_until_the_others_are_as_busy() -> None:
    spread = Spread(2)
    first = spread.choose([True, True])
    assert first == 0
    spread.started(0, 64)  # a large batch still running on member 0
    taken = []
    for _ in range(4):
        member = spread.choose([True, True])
        assert member is not None
        spread.started(member, 8)
        taken.append(member)
    # Member 1 takes small batches until its rows in flight pass member 0's 64.
    assert taken == [1, 1, 1, 1]
    for _ in range(4):
        spread.finished(1, 8)
    spread.finished(0, 64)
    assert [(load.rows, load.batches) for load in spread.loads] == [(0, 0), (0, 0)]


def test_under_steady_concurrent_load_the_rows_even_out() -> None:
    spread = Spread(2)
    running: list[tuple[int, int]] = []
    rows_by_member: Counter[int] = Counter()
    for i in range(1000):
        rows = 1 + (i * 7) % 16
        member = spread.choose([True, True])
        assert member is not None
        spread.started(member, rows)
        running.append((member, rows))
        rows_by_member[member] += rows
        if len(running) > 4:  # the oldest batch finishes: four in flight at a time
            done, done_rows = running.pop(0)
            spread.finished(done, done_rows)
    assert abs(rows_by_member[0] - rows_by_member[1]) <= 16 * 4, rows_by_member
