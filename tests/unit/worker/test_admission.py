"""Bounded places: a few run, a few wait in turn, the rest are refused at once; a waiter that goes away
leaves the queue; the load the shadow evaluation waits on counts every admitted request."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mixprec.errors import ResourceExhausted
from worker.admission import Admission, ServingLoad


def test_places_are_bounded_handed_over_in_turn_and_a_cancelled_waiter_leaves():
    async def scenario():
        load = ServingLoad()
        admission = Admission(max_inflight=2, max_queue=2, what="generations", load=load)
        await admission.acquire()
        await admission.acquire()
        order: list[str] = []

        async def wait(name):
            await admission.acquire()
            order.append(name)

        first, gone, second = (asyncio.ensure_future(wait(n)) for n in ("first", "gone", "second"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="2 generations running and 2 waiting"):
            await admission.acquire()  # the third waiter: refused at once
        assert admission.waiting == 2 and second.done()  # `second` was the one refused
        with pytest.raises(ResourceExhausted):
            await second
        gone.cancel()
        await asyncio.sleep(0)
        assert admission.waiting == 1 and load.busy == 3
        admission.release()
        await first
        assert order == ["first"] and admission.inflight == 2 and load.busy == 2
        admission.release()
        admission.release()
        assert admission.inflight == 0 and load.busy == 0

    asyncio.run(scenario())


def test_the_evaluation_waits_for_serving_to_go_idle_but_not_forever():
    load = ServingLoad()
    load.add(1)
    assert load.wait_idle(0.01) is False  # busy: the bound ends the wait
    waited = []
    evaluation = threading.Thread(target=lambda: waited.append(load.wait_idle(60)))
    evaluation.start()
    evaluation.join(0.05)
    assert evaluation.is_alive()  # still stepping aside while the request runs
    load.add(-1)
    evaluation.join()
    assert waited == [True]
