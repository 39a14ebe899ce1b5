"""EngineCore with a scripted backend: a failing sampler or step never kills the loop."""
from __future__ import annotations

import threading

from localllm.engine.core import EngineCore
from localllm.engine.messages import AddRequest, Shutdown
from localllm.engine.request import Request
from localllm.engine.scheduler import Scheduler
from localllm.types import FinishReason, SamplingParams
from tests.unit.fakes import FakeBackend, is_eog, piece


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
