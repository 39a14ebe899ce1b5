"""LlamaBackend, the test FakeBackend and PrefixStateDiskStore implement every member of their contracts
(engine/contracts.py) with compatible signatures, so no caller needs getattr/hasattr."""
from __future__ import annotations

import inspect
from typing import Protocol

import pytest

from localllm.engine import contracts
from localllm.engine.contracts import ModelBackend, PrefixStateStore, SequenceStates, StepBackend, Vocabulary
from tests.unit.fakes import FakeBackend, FakePrefixStore


def members(protocol: type) -> tuple[set[str], set[str]]:
    """(data attributes, methods) a protocol declares, its bases included."""
    data: set[str] = set()
    methods: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        data.update(getattr(cls, "__annotations__", {}))
        methods.update(name for name, value in vars(cls).items()
                       if callable(value) and not name.startswith("_"))
    return data, methods


def parameters(cls: type, name: str) -> list[inspect.Parameter]:
    """The method's parameters without self (static methods have none to drop)."""
    params = list(inspect.signature(getattr(cls, name)).parameters.values())
    if not isinstance(inspect.getattr_static(cls, name), staticmethod):
        params = params[1:]
    return params


def incompatibilities(contract: type, impl: type, name: str) -> list[str]:
    """Ways a call that the contract allows would fail on the implementation."""
    wanted, given = parameters(contract, name), {p.name: p for p in parameters(impl, name)}
    problems = []
    positional = [p.name for p in parameters(impl, name)
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for index, param in enumerate(wanted):
        mine = given.pop(param.name, None)
        if mine is None:
            problems.append(f"no parameter {param.name!r}")
        elif param.kind is param.POSITIONAL_OR_KEYWORD and positional[index:index + 1] != [param.name]:
            problems.append(f"{param.name!r} is not positional parameter {index}")
        elif param.kind is param.KEYWORD_ONLY and mine.kind not in (mine.KEYWORD_ONLY, mine.POSITIONAL_OR_KEYWORD):
            problems.append(f"{param.name!r} cannot be passed by keyword")
        elif param.default is not param.empty and mine.default != param.default:
            problems.append(f"{param.name!r} defaults to {mine.default!r}, not {param.default!r}")
    extra = [p.name for p in given.values() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return problems + [f"extra required parameter {n!r}" for n in extra]


def check(contract: type, impl: type, instance: object | None = None) -> list[str]:
    data, methods = members(contract)
    problems = []
    for name in sorted(data):  # declared on the class (annotation or property), or set on the instance
        declared = name in getattr(impl, "__annotations__", {}) or isinstance(getattr(impl, name, None), property)
        if not declared and not (instance is not None and hasattr(instance, name)):
            problems.append(f"{impl.__name__}.{name}: attribute missing")
    for name in sorted(methods):
        own = getattr(impl, name, None)
        if own is None or not callable(own) or own is getattr(contract, name):
            problems.append(f"{impl.__name__}.{name}: method missing")
            continue
        problems += [f"{impl.__name__}.{name}: {p}" for p in incompatibilities(contract, impl, name)]
    return problems


def test_the_checker_sees_a_missing_method_and_a_changed_signature():
    class Partial:
        num_vocab: int

        def tokenize(self, text: str, add_special: bool = False) -> list[int]:  # keyword-only lost, default changed
            return []

        def token_piece(self, token_id: int, extra: int) -> bytes:
            return b""

    problems = check(Vocabulary, Partial)
    assert "Partial.detokenize: method missing" in problems
    assert any("'parse_special'" in p for p in problems) and any("'add_special' defaults" in p for p in problems)
    assert "Partial.token_piece: extra required parameter 'extra'" in problems
    assert check(Vocabulary, type("Bare", (), {}))[0] == "Bare.num_vocab: attribute missing"


def test_every_contract_is_checked_here():
    declared = {value for value in vars(contracts).values() if isinstance(value, type)
                and getattr(value, "_is_protocol", False) and value.__module__ == contracts.__name__}
    assert declared == {Vocabulary, StepBackend, SequenceStates, ModelBackend, PrefixStateStore}


@pytest.mark.parametrize("contract", [Vocabulary, StepBackend, SequenceStates, ModelBackend])
def test_fake_backend_implements_the_backend_contracts(contract):
    assert check(contract, FakeBackend, FakeBackend()) == []


@pytest.mark.parametrize("contract", [Vocabulary, StepBackend, SequenceStates, ModelBackend])
def test_llama_backend_implements_the_backend_contracts(contract):
    pytest.importorskip("llama_cpp")
    from localllm.engine.llama_backend import LlamaBackend

    assert check(contract, LlamaBackend) == []


def test_the_disk_store_implements_the_prefix_state_store_contract(tmp_path):
    from localllm.cache.prefix_states import PrefixStateConfig, PrefixStateDiskStore

    store = PrefixStateDiskStore(PrefixStateConfig(tmp_path, namespace="test"))
    try:
        assert check(PrefixStateStore, PrefixStateDiskStore, store) == []
    finally:
        store.close()


def test_fake_prefix_store_implements_the_store_contract():
    assert check(PrefixStateStore, FakePrefixStore, FakePrefixStore()) == []
