"""The admission limits without HTTP: the preprocessing budget's order (small requests first, large ones
never taking the last share), its refusals and timeouts, including a grant that arrives as a wait
times out; the body memory; the request slots."""
import asyncio

import pytest

from classifier.budget import SMALL_SHARE, BodyMemory, MemoryBudget, Slots
from classifier.errors import ApiError

MB = 1 << 20


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_large_request_never_takes_the_small_share():
    budget = MemoryBudget(800 * MB, wait_seconds=1)
    assert budget.small == 100 * MB and budget.large_limit == 700 * MB

    async def main():
        with pytest.raises(ApiError) as e:
            async with budget.hold(701 * MB):
                pass
        assert e.value.status == 413 and e.value.code == "over_memory_budget"
        async with budget.hold(700 * MB):   # a large one at its limit ...
            async with budget.hold(100 * MB):   # ... leaves a small one room at once
                assert budget.used == 800 * MB
    run(main())


def test_small_requests_pass_large_waiters():
    """A large request holds most of the budget and another waits for it: small requests that fit
    are admitted at once, ahead of the large waiter; the large one gets its turn when the first ends."""
    budget = MemoryBudget(800 * MB, wait_seconds=5)
    order = []

    async def hold(name, nbytes, seconds):
        async with budget.hold(nbytes):
            order.append(name)
            await asyncio.sleep(seconds)

    async def main():
        first = asyncio.ensure_future(hold("large1", 600 * MB, 0.2))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(hold("large2", 600 * MB, 0))
        await asyncio.sleep(0.01)
        smalls = [asyncio.ensure_future(hold("small%d" % i, 50 * MB, 0.05)) for i in range(3)]
        await asyncio.sleep(0.05)
        assert order == ["large1", "small0", "small1", "small2"]   # no small one waited for large2
        await asyncio.gather(first, second, *smalls)
        assert order[-1] == "large2" and budget.used == 0
    run(main())


def test_a_small_waiter_is_granted_before_a_large_one_that_came_first():
    budget = MemoryBudget(800 * MB, wait_seconds=5)
    order = []

    async def hold(name, nbytes):
        async with budget.hold(nbytes):
            order.append(name)

    async def main():
        async with budget.hold(100 * MB * (SMALL_SHARE - 1)):   # the budget full but for its small share
            async with budget.hold(100 * MB):
                large = asyncio.ensure_future(hold("large", 200 * MB))
                await asyncio.sleep(0.01)
                small = asyncio.ensure_future(hold("small", 60 * MB))
                await asyncio.sleep(0.01)
                assert order == []
            await asyncio.sleep(0.01)   # the small share is free again: the small waiter goes first
            assert order == ["small"]
        await asyncio.gather(large, small)
        assert order == ["small", "large"]
    run(main())


def test_a_wait_past_the_limit_is_503_busy_and_leaves_nothing_held():
    budget = MemoryBudget(100 * MB, wait_seconds=0.05)

    async def main():
        async with budget.hold(80 * MB):
            with pytest.raises(ApiError) as e:
                async with budget.hold(50 * MB):
                    pass
            assert e.value.status == 503 and e.value.code == "busy" and "Retry-After" in e.value.headers
        assert budget.used == 0 and not budget._waiters[True] and not budget._waiters[False]
    run(main())


def test_a_grant_that_arrives_as_the_wait_times_out_is_given_back():
    """The race: the grant resolves the waiter's future in the same loop turn its timeout fires.
    Whichever wins, the bytes end up released and later requests are admitted."""
    budget = MemoryBudget(100 * MB, wait_seconds=0.05)

    async def main():
        loop = asyncio.get_running_loop()
        holder = MemoryBudget.hold(budget, 80 * MB)
        await holder.__aenter__()
        waiter = asyncio.ensure_future(budget._acquire(50 * MB))
        await asyncio.sleep(0)
        # release the holder exactly at the waiter's deadline
        loop.call_later(0.05, lambda: asyncio.ensure_future(holder.__aexit__(None, None, None)))
        try:
            await waiter
            budget._release(50 * MB)   # granted: give it back as hold() would
        except ApiError as e:
            assert e.code == "busy"
        await asyncio.sleep(0.01)
        assert budget.used == 0
        async with budget.hold(80 * MB), budget.hold(12 * MB):
            assert budget.used == 92 * MB
    run(main())


def test_body_memory_charges_as_bytes_arrive_and_refuses_past_its_total():
    memory = BodyMemory(10 * MB)
    a, b = memory.account(), memory.account()
    a.charge(6 * MB)
    with pytest.raises(ApiError) as e:
        b.charge(5 * MB)
    assert e.value.status == 503 and e.value.code == "busy" and e.value.headers["Connection"] == "close"
    assert b.bytes == 0 and memory.used == 6 * MB
    a.release()
    b.charge(5 * MB)
    assert memory.used == 5 * MB and memory.peak == 6 * MB


def test_slots_refuse_past_the_limit_and_free_on_exit():
    slots = Slots(2)
    with slots.hold(), slots.hold():
        assert slots.full
        with pytest.raises(ApiError) as e:
            with slots.hold():
                pass
        assert e.value.status == 503 and e.value.code == "too_many_requests"
    with pytest.raises(RuntimeError):
        with slots.hold():
            raise RuntimeError("a request that fails still gives its slot back")
    assert slots.used == 0 and not slots.full


def test_large_images_are_decoded_on_their_own_thread():
    """An image costing more than the budget's small share to decode goes to the large pool, so
    ordinary photos never queue behind it for a decoding thread."""
    import concurrent.futures
    import threading

    from classifier.images import Preprocessor, Upload
    from mbv3.bundle import Preprocessing

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="small")
    large = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="large")
    images = Preprocessor(Preprocessing(size=(32, 32)), pool, 8, 10 ** 8, 10 ** 8, "reference",
                          large_pool=large, large_bytes=20 * MB)
    photo, huge = Upload(b"", name="photo", width=640, height=480, mode="RGB"), \
        Upload(b"", name="huge", width=8000, height=5000, mode="RGB")
    seen = {}
    for upload in (photo, huge):
        job = images.job(upload, uint8=False)
        seen[upload.name] = job.where.submit(lambda: threading.current_thread().name).result()
    assert seen["photo"].startswith("small") and seen["huge"].startswith("large"), seen
    pool.shutdown()
    large.shutdown()
