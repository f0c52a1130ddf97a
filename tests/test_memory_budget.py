"""The memory budget's arithmetic, its refusals, and where the limit comes from (tables of cases, files in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from scaler.errors import TooMany
from scaler.rules.database_urls import parse_url
from scaler.rules.memory_budget import GUARD, MIB, Costs, MemoryBudget, memory_limit_setting, parse_bytes
from scaler.rules.trigger_metadata import NamedDatabase, parse_metadata
from scaler.service.database_caches import AirflowDatabases, DatabaseSettings
from scaler.service.metrics import ScalerMetrics
from scaler.service.process_memory import cgroup_memory_limit, resident_bytes
from scaler.service.scaled_objects import ScaledObjectKey, ScaledObjects


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("268435456", 268435456),
        ("256Mi", 256 * MIB),
        ("0.5Gi", 512 * MIB),
        ("1Gi", 1024 * MIB),
        ("300M", 300_000_000),
        ("300m", 300_000_000),
        ("64Ki", 65536),
        (" 2Ti ", 2 * 1024**4),
    ],
)
def test_sizes_are_read_as_kubernetes_writes_them(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "0", "256 MiB", "1e9", "9" * 5000, "256Xi"])
def test_a_bad_size_is_named_in_a_short_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"size in bytes|greater than 0") as raised:
        parse_bytes(text)
    assert len(str(raised.value)) < 200


def test_the_setting_reads_auto_and_off() -> None:
    assert memory_limit_setting("auto") is None
    assert memory_limit_setting("off") == 0
    assert memory_limit_setting("512Mi") == 512 * MIB


def test_the_budget_leaves_headroom_and_the_memory_held_at_start() -> None:
    budget = MemoryBudget(limit=500 * MIB, baseline=100 * MIB)
    assert budget.budget == 300 * MIB  # 500 x 0.8 - 100


def test_past_the_budget_a_new_one_is_refused_naming_the_limit_and_a_returned_charge_makes_room() -> None:
    costs = Costs(stream=10 * MIB, stream_per_request_byte=0, scaled_object=MIB, database=MIB)
    budget = MemoryBudget(limit=100 * MIB, baseline=40 * MIB, costs=costs)  # 40 MiB to give
    for _ in range(4):
        budget.take("stream", budget.stream_cost(0))
    with pytest.raises(TooMany, match=r"--memory-limit 100 MiB") as raised:
        budget.take("stream", budget.stream_cost(0))
    assert "memory budget is used up" in str(raised.value)
    assert budget.held["stream"] == 4
    budget.give_back("stream", budget.stream_cost(0))
    budget.take("stream", budget.stream_cost(0))
    assert budget.used == 40 * MIB


def test_the_operators_own_databases_are_charged_but_never_refused() -> None:
    budget = MemoryBudget(limit=100 * MIB, baseline=79 * MIB)  # 1 MiB to give
    budget.take("database", 5 * MIB, force=True)
    assert budget.used == 5 * MIB
    with pytest.raises(TooMany):
        budget.take("scaled_object", 1)


def test_nothing_new_is_admitted_while_resident_memory_is_past_the_guard() -> None:
    resident = [0]
    budget = MemoryBudget(limit=100 * MIB, baseline=0, resident=lambda: resident[0])
    resident[0] = int(GUARD * 100 * MIB) + 1
    with pytest.raises(TooMany, match="resident memory"):
        budget.take("scaled_object", 1)
    resident[0] = 50 * MIB
    budget.take("scaled_object", 1)


def test_without_a_limit_everything_is_counted_and_nothing_refused() -> None:
    budget = MemoryBudget(limit=None, resident=lambda: 1 << 40)
    budget.take("stream", 1 << 40)
    assert (budget.used, budget.held["stream"], budget.budget) == (1 << 40, 1, 0)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "cgroup", "expected"),
    [
        ({"kubepods/pod1/c1/memory.max": "536870912\n"}, "0::/kubepods/pod1/c1\n", 512 * MIB),
        ({"memory.max": "268435456\n"}, "0::/\n", 256 * MIB),  # a container's own cgroup namespace
        ({"memory.max": "max\n"}, "0::/\n", None),
        ({"memory/kubepods/c1/memory.limit_in_bytes": "268435456\n"}, "4:memory:/kubepods/c1\n", 256 * MIB),
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, "4:memory:/\n", None),  # v1's "no limit"
        ({}, "0::/\n", None),
        ({"memory.max": "garbage\n"}, "", None),
    ],
    ids=["v2 own cgroup", "v2 namespaced", "v2 no limit", "v1 own cgroup", "v1 no limit", "none", "unreadable"],
)
def test_the_limit_is_read_from_the_cgroup(
    tmp_path: Path, files: dict[str, str], cgroup: str, expected: int | None
) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        write(root / name, text)
    write(tmp_path / "proc-self-cgroup", cgroup)
    assert cgroup_memory_limit(root, tmp_path / "proc-self-cgroup") == expected


def test_resident_memory_is_read_from_proc() -> None:
    resident = resident_bytes()
    assert resident is not None
    assert 10 * MIB < resident < 4096 * MIB


async def test_a_scaled_objects_database_must_fit_the_budget_the_operators_are_always_opened() -> None:
    budget = MemoryBudget(limit=10 * MIB, baseline=6 * MIB)  # 2 MiB to give: two databases
    databases = AirflowDatabases(
        configured={"a": parse_url("postgresql://u@127.0.0.1:1/a"), "b": parse_url("postgresql://u@127.0.0.1:1/b")},
        settings=DatabaseSettings(),
        budget=budget,
    )
    try:
        for name in ("a", "b"):
            databases.cache_for(NamedDatabase(name))  # opened lazily: no connection is made here
        assert budget.used == 2 * MIB
        with pytest.raises(TooMany, match="--memory-limit 10 MiB"):
            databases.cache_for(parse_url("postgresql://u@127.0.0.1:1/c"))
        assert budget.held["database"] == 2
    finally:
        await databases.close()
    assert (budget.used, budget.held["database"]) == (0, 0)


def test_scaled_objects_and_streams_are_charged_refused_past_the_budget_and_given_back_when_gone() -> None:
    now = [0.0]
    costs = Costs(stream=3 * MIB, stream_per_request_byte=0, scaled_object=MIB, database=MIB)
    budget = MemoryBudget(limit=10 * MIB, baseline=2 * MIB, costs=costs)  # 6 MiB to give
    known = ScaledObjects(metrics=ScalerMetrics(CollectorRegistry()), ttl=60.0, clock=lambda: now[0], budget=budget)
    spec = parse_metadata({"database": "airflow"})
    first, second = ScaledObjectKey("a", "first"), ScaledObjectKey("a", "second")
    charged = known.stream_opened(first, 100)  # 1 + 3 MiB
    with pytest.raises(TooMany, match="a new stream needs 3 MiB"):
        known.stream_opened(second, 100)  # its ScaledObject fits (1 MiB), its stream does not
    known.seen(first, spec, cache=None)  # type: ignore[arg-type]  # the cache is not looked at here
    assert budget.held == {"stream": 1, "scaled_object": 2, "database": 0}
    known.stream_closed(first, charged)
    now[0] = 120.0
    assert sorted(str(key) for key in known.expire()) == ["a/first", "a/second"]
    assert (budget.used, budget.held) == (0, {"stream": 0, "scaled_object": 0, "database": 0})
