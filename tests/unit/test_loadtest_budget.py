"""-L's budget (loadtest/budget.py): one counter for the whole run, shared by every client of
every load process, as emqtt-bench's pub_limit_fun_init; never more than -L in all."""
from __future__ import annotations

import multiprocessing

import pytest

from loadtest.budget import Budget


def test_take_grants_what_is_left_then_nothing():
    b = Budget(multiprocessing.get_context("spawn"), 10)
    assert (b.take(4), b.left, b.spent) == (4, 6, False)
    assert (b.take(64), b.left, b.spent) == (6, 0, True)  # a batch larger than what is left
    assert b.take(1) == 0 and b.left == 0


def test_an_empty_budget_is_refused():
    with pytest.raises(ValueError):
        Budget(multiprocessing.get_context("spawn"), 0)


def _drain(budget: Budget, batch: int, out) -> None:
    got = 0
    while True:
        n = budget.take(batch)
        if not n:
            break
        got += n
    out.put(got)


@pytest.mark.parametrize("batch", [1, 7])
def test_processes_taking_at_once_get_exactly_the_total(batch):
    ctx = multiprocessing.get_context("spawn")
    budget, out = Budget(ctx, 20_003), ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(budget, batch, out)) for _ in range(4)]
    for p in procs:
        p.start()
    shares = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(shares) == 20_003 and budget.left == 0
