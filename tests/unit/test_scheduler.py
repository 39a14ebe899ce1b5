"""Scheduler behaviour with a scripted backend: no model, no llama.cpp."""
from __future__ import annotations

from localllm.engine.request import Request, RequestState
from localllm.engine.scheduler import Scheduler
from localllm.engine.slots import KvCopy
from localllm.types import FinishReason, SamplingParams
from tests.unit.fakes import EOS, FakeBackend, is_eog, piece


def make_scheduler(num_slots: int = 2, num_batch: int = 16) -> Scheduler:
    return Scheduler(num_slots, num_batch, piece, is_eog)


def make_request(request_id: str, prompt: list[int], max_tokens: int = 8, **params) -> Request:
    return Request(request_id, prompt, SamplingParams(max_tokens=max_tokens, **params), max_new_tokens=max_tokens)


def step(scheduler: Scheduler, backend: FakeBackend):
    plan = scheduler.schedule()
    backend.apply_kv_ops(plan.kv_ops)
    deltas = scheduler.update(plan, backend.decode(plan.chunks))
    scheduler.slot_table.check_integrity()
    for slot in scheduler.slot_table.slots:  # the scheduler's view of the KV cache is the truth
        assert backend.kv.get(slot.slot_id, []) == slot.cached_token_ids
    return plan, deltas


def run_to_end(scheduler: Scheduler, backend: FakeBackend, limit: int = 100) -> dict[str, list]:
    by_request: dict[str, list] = {}
    for _ in range(limit):
        if not scheduler.has_work:
            return by_request
        _, deltas = step(scheduler, backend)
        for d in deltas:
            by_request.setdefault(d.request_id, []).append(d)
    raise AssertionError("scheduler did not finish")


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


def test_requests_beyond_the_slots_wait_and_join_when_a_slot_frees():
    scheduler, backend = make_scheduler(num_slots=2), FakeBackend()
    for i in range(3):
        scheduler.add(make_request(f"r{i}", [50 + i, 60 + i], max_tokens=2 + i))
    plan, _ = step(scheduler, backend)
    assert [r.request_id for r in plan.admitted] == ["r0", "r1"]
    assert [r.request_id for r in scheduler.waiting] == ["r2"]
    step(scheduler, backend)  # r0 reaches max_tokens=2 and leaves
    plan, _ = step(scheduler, backend)
    assert [r.request_id for r in plan.admitted] == ["r2"]
    results = run_to_end(scheduler, backend)
    assert results["r2"][-1].finish_reason is FinishReason.LENGTH
    assert results["r2"][-1].num_generated_tokens == 4


def test_long_prompt_is_chunked_and_shares_each_batch_with_running_decodes():
    scheduler, backend = make_scheduler(num_slots=2, num_batch=8), FakeBackend()
    scheduler.add(make_request("short", [10, 11], max_tokens=20))
    step(scheduler, backend)
    assert scheduler.running["short"].state is RequestState.DECODE
    long_prompt = list(range(200, 225))  # 25 tokens, budget 8 per step
    scheduler.add(make_request("long", long_prompt, max_tokens=2))
    seen_prompt_chunks = []
    for _ in range(10):
        plan, deltas = step(scheduler, backend)
        assert plan.num_tokens <= 8
        # The running stream gets its token in every step while the prompt is processed.
        assert [c.request.request_id for c in plan.chunks if not c.is_prompt] == ["short"]
        assert any(d.request_id == "short" for d in deltas)
        seen_prompt_chunks += [len(c.token_ids) for c in plan.chunks if c.is_prompt]
        if scheduler.running["long"].state is RequestState.DECODE:
            break
    assert seen_prompt_chunks == [7, 7, 7, 4]
    assert backend.kv[scheduler.running["long"].slot_id] == long_prompt


def test_logits_are_requested_only_where_a_token_is_sampled():
    scheduler, backend = make_scheduler(num_slots=1, num_batch=4), FakeBackend()
    scheduler.add(make_request("r", list(range(30, 40)), max_tokens=3))
    plans = [step(scheduler, backend)[0] for _ in range(3)]
    assert [c.wants_logits for p in plans for c in p.chunks] == [False, False, True]


def test_abort_frees_the_slot_for_the_next_step():
    scheduler, backend = make_scheduler(num_slots=1), FakeBackend()
    scheduler.add(make_request("a", [1, 2, 3], max_tokens=50))
    scheduler.add(make_request("b", [4, 5, 6], max_tokens=2))
    step(scheduler, backend)
    delta = scheduler.abort("a")
    assert delta.finish_reason is FinishReason.ABORT
    assert scheduler.slot_table.free_slots()
    plan, _ = step(scheduler, backend)
    assert [r.request_id for r in plan.admitted] == ["b"]
    assert scheduler.abort("a") is None  # already gone: a second abort is a no-op


def test_abort_of_a_waiting_request_removes_it_from_the_queue():
    scheduler = make_scheduler(num_slots=1)
    scheduler.add(make_request("a", [1, 2]))
    scheduler.add(make_request("b", [3, 4]))
    step(scheduler, FakeBackend())
    assert scheduler.abort("b").finish_reason is FinishReason.ABORT
    assert not scheduler.waiting


def test_stop_string_split_across_tokens_is_matched_and_never_emitted():
    scheduler = make_scheduler(num_slots=1)
    backend = FakeBackend({"r": [8, 4, 5, 9]})  # "t8 " "ST" "OP" "t9 "
    scheduler.add(make_request("r", [1, 2], max_tokens=10, stop=("OPE", "STOP", "TOP")))
    deltas = run_to_end(scheduler, backend)["r"]
    assert text_of(deltas) == "t8 "
    assert deltas[-1].finish_reason is FinishReason.STOP
    assert deltas[-1].stop_sequence == "STOP"  # the earliest match names the stop (Anthropic reports it)
    assert deltas[1].text == ""  # "ST" was held back until it could be ruled in or out


def test_end_of_generation_names_no_stop_string():
    scheduler = make_scheduler(num_slots=1)
    backend = FakeBackend({"r": [8, EOS]})
    scheduler.add(make_request("r", [1], max_tokens=10, stop=("STOP",)))
    deltas = run_to_end(scheduler, backend)["r"]
    assert deltas[-1].finish_reason is FinishReason.STOP and deltas[-1].stop_sequence is None


def test_partial_stop_that_does_not_complete_is_released():
    scheduler = make_scheduler(num_slots=1)
    backend = FakeBackend({"r": [4, 8]})  # "ST" then "t8 "
    scheduler.add(make_request("r", [1], max_tokens=2, stop=("STOP",)))
    assert text_of(run_to_end(scheduler, backend)["r"]) == "STt8 "


def test_multibyte_character_split_over_tokens_is_emitted_whole():
    scheduler = make_scheduler(num_slots=1)
    backend = FakeBackend({"r": [1, 2, 3]})  # emoji in two tokens, then a CJK character
    scheduler.add(make_request("r", [10], max_tokens=3))
    deltas = run_to_end(scheduler, backend)["r"]
    assert [d.text for d in deltas] == ["", "😀", "中"]


def test_end_of_generation_stops_unless_ignored():
    scheduler = make_scheduler(num_slots=2)
    backend = FakeBackend({"stops": [8, EOS, 9], "ignores": [8, EOS, 9]})
    scheduler.add(make_request("stops", [1], max_tokens=3))
    scheduler.add(make_request("ignores", [2], max_tokens=3, ignore_eos=True))
    results = run_to_end(scheduler, backend)
    assert results["stops"][-1].finish_reason is FinishReason.STOP
    assert results["stops"][-1].num_generated_tokens == 2
    assert results["ignores"][-1].finish_reason is FinishReason.LENGTH
    assert results["ignores"][-1].num_generated_tokens == 3


def test_second_request_reuses_the_cached_prefix_of_a_finished_one():
    scheduler, backend = make_scheduler(num_slots=2, num_batch=64), FakeBackend()
    shared = list(range(100, 140))
    scheduler.add(make_request("first", shared + [1, 2], max_tokens=2))
    run_to_end(scheduler, backend)
    scheduler.add(make_request("second", shared + [3, 4, 5], max_tokens=1))
    plan, _ = step(scheduler, backend)
    request = plan.admitted[0]
    assert request.num_reused_tokens == 40
    assert [len(c.token_ids) for c in plan.chunks] == [3]  # only the remainder is evaluated
    assert plan.admitted[0].state is RequestState.FINISHED


def test_prefix_is_copied_from_a_busy_slot_into_a_free_one():
    scheduler, backend = make_scheduler(num_slots=2, num_batch=64), FakeBackend()
    shared = list(range(100, 130))
    scheduler.add(make_request("running", shared + [1], max_tokens=30))
    step(scheduler, backend)
    scheduler.add(make_request("newcomer", shared + [2, 3], max_tokens=1))
    plan, _ = step(scheduler, backend)
    copies = [op for op in plan.kv_ops if isinstance(op, KvCopy)]
    assert copies == [KvCopy(src_slot_id=0, dst_slot_id=1, num_tokens=30)]
    assert plan.admitted[0].num_reused_tokens == 30


def test_identical_prompt_still_evaluates_its_last_token():
    scheduler, backend = make_scheduler(num_slots=1), FakeBackend()
    prompt = list(range(100, 110))
    scheduler.add(make_request("a", prompt, max_tokens=1))
    run_to_end(scheduler, backend)
    scheduler.add(make_request("b", prompt, max_tokens=1))
    plan, deltas = step(scheduler, backend)
    assert plan.admitted[0].num_reused_tokens == 9
    assert [c.token_ids for c in plan.chunks] == [[109]]
    assert deltas[0].num_cached_tokens == 9


def test_failed_step_ends_its_requests_and_forgets_their_cache():
    scheduler = make_scheduler(num_slots=2)
    scheduler.add(make_request("r", [1, 2, 3]))
    plan = scheduler.schedule()
    deltas, ops = scheduler.fail(plan, "boom")
    assert deltas[0].finish_reason is FinishReason.ERROR and deltas[0].error == "boom"
    assert scheduler.slot_table.free_slots() == scheduler.slot_table.slots
    assert all(s.cached_token_ids == [] for s in scheduler.slot_table.slots)
    assert ops
