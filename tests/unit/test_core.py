"""EngineCore with a scripted backend: a failing sampler or step never kills the loop."""
from __future__ import annotations

import threading

from localllm.engine.core import EngineCore
from localllm.engine.prefix_states import PrefixStates
from localllm.engine.messages import AbortRequest, AddRequest, Shutdown
from localllm.engine.request import Request
from localllm.engine.scheduler import Scheduler
from localllm.types import FinishReason, SamplingParams
from tests.unit.fakes import FakeBackend, FakePrefixStore, is_eog, piece


class BrokenSamplerBackend(FakeBackend):
    def add_sampler(self, request_id: str, params) -> None:
        if request_id == "bad":
            raise ValueError("grammar refused")
        super().add_sampler(request_id, params)


def run_core(backend: FakeBackend, requests: list[Request]) -> dict[str, list]:
    published: dict[str, list] = {}
    done = threading.Event()

    def publish(deltas):
        for d in deltas:
            published.setdefault(d.request_id, []).append(d)
        if all(r.request_id in published and published[r.request_id][-1].finish_reason for r in requests):
            done.set()

    core = EngineCore(backend, Scheduler(2, 16, piece, is_eog), publish, "fake", 64)
    for request in requests:
        core.commands.put(AddRequest(request))
    thread = threading.Thread(target=core.run)
    thread.start()
    assert done.wait(10)
    core.commands.put(Shutdown())
    thread.join(10)
    assert not thread.is_alive()
    return published


def request(request_id: str) -> Request:
    return Request(request_id, [1, 2, 3], SamplingParams(max_tokens=3), max_new_tokens=3)


def test_a_request_whose_sampler_fails_ends_with_an_error_and_the_rest_run():
    results = run_core(BrokenSamplerBackend(), [request("bad"), request("good")])
    assert results["bad"][-1].finish_reason is FinishReason.ERROR and "grammar" in results["bad"][-1].error
    assert results["good"][-1].finish_reason is FinishReason.LENGTH


def test_a_failing_decode_fails_its_requests_and_the_loop_goes_on():
    backend = FakeBackend()
    backend.fail_next_decode = True
    results = run_core(backend, [request("first")])
    assert results["first"][-1].finish_reason is FinishReason.ERROR
    backend.fail_next_decode = False
    again = run_core(backend, [request("second")])
    assert again["second"][-1].finish_reason is FinishReason.LENGTH


def test_stats_seen_with_a_delta_include_its_admission_and_finish():
    """Token counters may lag by STATS_INTERVAL_S, but the publish that carries a request's
    first token shows it busy, and the one that carries its last shows it finished."""
    seen = []
    core = None

    def publish(deltas):
        for delta in deltas:
            seen.append((delta, core.stats))

    core = EngineCore(FakeBackend(), Scheduler(2, 16, piece, is_eog), publish, "fake", 64)
    core.commands.put(AddRequest(Request("r", [1, 2, 3], SamplingParams(max_tokens=8), max_new_tokens=8)))
    core._take_commands()
    while core.scheduler.has_work:
        core._step()
    first, first_stats = seen[0]
    last, last_stats = seen[-1]
    assert first_stats.num_busy_slots == 1 and first_stats.num_admitted_total == 1
    assert last.finish_reason is FinishReason.LENGTH
    assert last_stats.num_busy_slots == 0 and last_stats.num_generated_tokens_total == 8
    assert last_stats.finished_by_reason == {"length": 1}


def make_core(backend: FakeBackend, store: FakePrefixStore | None = None, num_slots: int = 2):
    """A core driven step by step on this thread; returns it and the deltas it publishes, by request."""
    published: dict[str, list] = {}
    states = PrefixStates(store, backend) if store is not None else None
    scheduler = Scheduler(num_slots, 16, piece, is_eog, saved_prefix=states.find if states else None)

    def publish(deltas):
        for d in deltas:
            published.setdefault(d.request_id, []).append(d)

    return EngineCore(backend, scheduler, publish, "fake", 64, states), published


def drive(core: EngineCore, *requests: Request) -> None:
    for r in requests:
        core.commands.put(AddRequest(r))
    core._take_commands()
    while core.scheduler.has_work:
        core._step()
        core.scheduler.slot_table.check_integrity()
        for slot in core.scheduler.slot_table.slots:  # the scheduler's view of the KV cache is the truth
            assert core.backend.kv.get(slot.slot_id, []) == slot.cached_token_ids


def prompted(request_id: str, prompt: list[int], max_tokens: int = 2) -> Request:
    return Request(request_id, prompt, SamplingParams(max_tokens=max_tokens), max_new_tokens=max_tokens)


def test_no_kv_room_takes_back_idle_prefixes_then_a_batch_that_still_does_not_fit_fails_alone():
    backend = FakeBackend(num_kv_cells=30)
    core, published = make_core(backend)
    drive(core, prompted("first", list(range(100, 120))))  # its slot keeps 21 cells cached
    drive(core, prompted("second", list(range(200, 212))))  # 21 + 12 > 30: the idle prefix must go
    assert backend.num_no_room == 1
    assert published["second"][-1].finish_reason is FinishReason.LENGTH
    assert sorted(len(s.cached_token_ids) for s in core.scheduler.slot_table.slots) == [0, 13]
    drive(core, prompted("huge", list(range(300, 340))))  # 40 tokens never fit 30 cells
    assert published["huge"][-1].finish_reason is FinishReason.ERROR
    drive(core, prompted("after", [1, 2, 3]))
    assert published["after"][-1].finish_reason is FinishReason.LENGTH


def test_a_saved_prefix_is_restored_after_a_restart():
    store, prompt = FakePrefixStore(min_tokens=8), list(range(100, 120))
    core, _ = make_core(FakeBackend(), store)
    drive(core, prompted("first", prompt))
    assert store.index == {",".join(map(str, prompt)): prompt}
    restarted = FakeBackend()  # empty KV cache: only the store remembers
    core, published = make_core(restarted, store)
    drive(core, prompted("second", prompt + [5, 6]))
    assert published["second"][-1].num_cached_tokens == 20 and store.num_restored == 1
    assert [(c.start_pos, c.token_ids) for c in restarted.decoded_batches[0]] == [(20, [5, 6])]
    assert core.stats.num_prefix_hits_total == 1 and core.stats.num_reused_tokens_total == 20


def test_saved_and_live_prefixes_serve_only_their_own_cache_namespace():
    store, prompt = FakePrefixStore(min_tokens=8), list(range(100, 120))
    core, _ = make_core(FakeBackend(), store)
    alice = prompted("alice", prompt)
    alice.cache_namespace = "alice"
    drive(core, alice)
    bob = prompted("bob", prompt + [5, 6])
    bob.cache_namespace = "bob"
    drive(core, bob)  # alice's slot still holds her prompt: not for bob
    assert store.num_restored == 0 and bob.num_reused_tokens == 0
    store.index = {k: v for k, v in store.index.items() if store.namespaces[k] == "alice"}  # bob's own save
    core, published = make_core(FakeBackend(), store)  # restarted: only the store remembers
    for name in ("bob", "alice"):
        request = prompted(f"{name}-2", prompt + [7])
        request.cache_namespace = name
        drive(core, request)
    assert published["bob-2"][-1].num_cached_tokens == 0
    assert published["alice-2"][-1].num_cached_tokens == 20 and store.num_restored == 1


def test_a_saved_prefix_gone_before_its_restore_starts_cold_and_so_does_a_copy_of_it():
    store, prompt = FakePrefixStore(min_tokens=8), list(range(100, 120))
    core, _ = make_core(FakeBackend(), store)
    drive(core, prompted("saver", prompt))
    store.evict_data()  # the index still names the state; loading it finds nothing
    backend = FakeBackend()
    core, published = make_core(backend, store)
    # "a" plans a restore; "b", admitted next, plans a copy of the prefix "a" is about to hold.
    drive(core, prompted("a", prompt + [1]), prompted("b", prompt + [2]))
    for request_id in ("a", "b"):
        assert published[request_id][-1].finish_reason is FinishReason.LENGTH
        assert published[request_id][-1].num_cached_tokens == 0
    evaluated = {"a": 0, "b": 0}
    for chunk in (c for batch in backend.decoded_batches for c in batch if c.is_prompt):
        evaluated[chunk.request.request_id] += len(chunk.token_ids)
    assert evaluated == {"a": 21, "b": 21}


def test_a_step_that_fails_before_it_has_a_plan_fails_every_running_request_and_the_loop_goes_on():
    backend = FakeBackend()
    core, published = make_core(backend)
    core.commands.put(AddRequest(prompted("running", [1, 2, 3], max_tokens=8)))
    core._take_commands()
    core._step()
    fill = core.scheduler.fill
    core.scheduler.fill = lambda plan: (_ for _ in ()).throw(RuntimeError("scheduler bug"))
    core._step()
    core.scheduler.fill = fill
    assert published["running"][-1].finish_reason is FinishReason.ERROR
    assert "scheduler bug" in published["running"][-1].error
    assert all(not s.cached_token_ids for s in core.scheduler.slot_table.slots) and not any(backend.kv.values())
    assert not backend.samplers
    drive(core, prompted("next", [4, 5]))
    assert published["next"][-1].finish_reason is FinishReason.LENGTH


class FailingFreeBackend(FakeBackend):
    def remove_sampler(self, request_id: str) -> None:
        if request_id == "bad":
            raise RuntimeError("scripted sampler free failure")
        super().remove_sampler(request_id)


def test_a_failing_sampler_free_still_delivers_the_final_delta_and_the_loop_goes_on():
    backend = FailingFreeBackend()
    results = run_core(backend, [request("bad")])
    assert results["bad"][-1].finish_reason is FinishReason.LENGTH
    again = run_core(backend, [request("good")])  # run_core joins the thread: it ended on Shutdown
    assert again["good"][-1].finish_reason is FinishReason.LENGTH


def run_with_flaky_publish(requests: list[Request], num_failures: int, *, fail_final_only: bool) -> dict[str, list]:
    """Like run_core, but the first `num_failures` publishes (of final deltas only, if asked) raise."""
    published: dict[str, list] = {}
    failures = [num_failures]
    done = threading.Event()

    def publish(deltas):
        if failures[0] > 0 and (not fail_final_only or any(d.finish_reason for d in deltas)):
            failures[0] -= 1
            raise RuntimeError("Event loop is closed")
        for d in deltas:
            published.setdefault(d.request_id, []).append(d)
        if all(r.request_id in published and published[r.request_id][-1].finish_reason for r in requests):
            done.set()

    core = EngineCore(FakeBackend(), Scheduler(2, 16, piece, is_eog), publish, "fake", 64)
    thread = threading.Thread(target=core.run)
    thread.start()
    for r in requests:
        core.commands.put(AddRequest(r))
    assert done.wait(10), published
    core.commands.put(Shutdown())
    thread.join(10)
    assert not thread.is_alive()
    return published


def test_a_failed_publish_of_final_deltas_resends_them_and_the_loop_goes_on():
    results = run_with_flaky_publish([request("first")], 1, fail_final_only=True)
    assert results["first"][-1].finish_reason is FinishReason.LENGTH


def test_a_failed_publish_mid_stream_fails_the_request_with_a_final_delta():
    results = run_with_flaky_publish([request("first"), request("second")], 1, fail_final_only=False)
    for request_id in ("first", "second"):
        assert results[request_id][-1].finish_reason is FinishReason.ERROR


def test_a_failed_publish_at_shutdown_still_ends_the_engine_thread():
    def publish(deltas):
        raise RuntimeError("Event loop is closed")

    core = EngineCore(FakeBackend(), Scheduler(2, 16, piece, is_eog), publish, "fake", 64)
    core.commands.put(AddRequest(request("left")))
    core.commands.put(Shutdown())
    raised = []

    def run() -> None:
        try:
            core.run()
        except BaseException as exc:  # the thread must end by leaving its loop, not by dying
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and raised == []


def test_a_failed_abort_publish_fails_the_running_requests_and_the_loop_goes_on():
    """A failure while handling commands (here publishing an abort's delta) has no plan: every
    running request fails with a final delta, and the loop still handles Shutdown."""
    published: dict[str, list] = {}
    failures = [1]

    def publish(deltas):
        if failures[0] and any(d.finish_reason is FinishReason.ABORT for d in deltas):
            failures[0] -= 1
            raise RuntimeError("scripted publish failure")
        for d in deltas:
            published.setdefault(d.request_id, []).append(d)

    core = EngineCore(FakeBackend(), Scheduler(2, 16, piece, is_eog), publish, "fake", 64)
    long = Request("long", [1, 2, 3], SamplingParams(max_tokens=50), max_new_tokens=50)
    core.commands.put(AddRequest(long))
    core.commands.put(AddRequest(request("gone")))
    core._take_commands()
    core._step()
    core.commands.put(AbortRequest("gone"))
    thread = threading.Thread(target=core.run)
    thread.start()
    core.commands.put(Shutdown())
    thread.join(10)
    assert not thread.is_alive()
    assert published["gone"][-1].finish_reason is FinishReason.ABORT  # re-sent
    assert published["long"][-1].finish_reason is FinishReason.ERROR
