"""Drain's leader election on a Lease, against the API endpoints of the fake the Kubernetes tests use (with the
API server's resourceVersion check), on fake clocks: one replica leads at a time; another takes over within the
Lease's duration when the leader stops renewing, at once when it releases; a lost race is no error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scaler.adapters.kubernetes.access import KubernetesSettings, connect
from scaler.adapters.kubernetes.api import KubernetesApi
from scaler.service.leadership import LeaseLeadership
from tests.support.fake_kubernetes import FakeKubernetes, kubeconfig
from tests.support.kustomize import load_documents

ROOT = Path(__file__).resolve().parent.parent
NS, NAME = "keda", "airflow-keda-scaler-drain"


class Clocks:
    """One wall clock and one monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - 1_700_000_000.0


@pytest.fixture
async def cluster() -> AsyncIterator[FakeKubernetes]:
    fake = await FakeKubernetes().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def api(cluster: FakeKubernetes, tmp_path: Path) -> AsyncIterator[KubernetesApi]:
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(cluster.url, "token"))
    api = KubernetesApi(await connect(KubernetesSettings(mode="kubeconfig", kubeconfig=str(config))))
    yield api
    await api.close()


def replica(api: KubernetesApi, clocks: Clocks, identity: str, changes: list[bool] | None = None) -> LeaseLeadership:
    return LeaseLeadership(
        api,
        namespace=NS,
        name=NAME,
        identity=identity,
        duration=15.0,
        on_change=(changes if changes is not None else []).append,
        wall_clock=clocks.wall,
        clock=clocks.monotonic,
    )


async def test_one_replica_leads_and_another_takes_over_when_it_stops_renewing(
    api: KubernetesApi, cluster: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    clocks = Clocks()
    a_changes: list[bool] = []
    a, b = replica(api, clocks, "a", a_changes), replica(api, clocks, "b")
    assert await a.try_once()
    assert not await b.try_once()
    assert cluster.leases[(NS, NAME)]["spec"]["holderIdentity"] == "a"

    # a renews within the duration; b still may not take it.
    clocks.now += 5
    assert await a.try_once()
    clocks.now += 9  # 9 s after a's renewal
    assert a.leading()
    assert not await b.try_once()

    # a stops renewing: it stops leading two thirds of the way, before b may take over at the full duration.
    clocks.now += 2  # 11 s after it
    assert not a.leading()
    assert not await b.try_once()
    clocks.now += 4.5  # 15.5 s after it
    assert await b.try_once()
    lease = cluster.leases[(NS, NAME)]["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("b", 1)
    assert not await a.try_once()  # a comes back: b holds it
    assert a_changes == [True, False]


async def test_a_released_lease_is_taken_at_once(api: KubernetesApi) -> None:
    clocks = Clocks()
    a, b = replica(api, clocks, "a"), replica(api, clocks, "b")
    assert await a.try_once()
    await a.release()
    assert not a.leading()
    assert await b.try_once()


async def test_of_two_replicas_that_race_for_an_expired_lease_one_wins(
    api: KubernetesApi, cluster: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    clocks = Clocks()
    a, b = replica(api, clocks, "a"), replica(api, clocks, "b")
    assert await a.try_once()
    clocks.now += 60
    # Both read the expired Lease before either writes: the second write carries a stale resourceVersion.
    stale = await api.read_lease(NS, NAME)
    assert await b.try_once()
    assert stale is not None
    spec = {**stale["spec"], "holderIdentity": "c"}
    with pytest.raises(Exception, match="changed since it was read"):
        await api.write_lease(NS, NAME, spec, stale["metadata"]["resourceVersion"])
    assert cluster.leases[(NS, NAME)]["spec"]["holderIdentity"] == "b"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_forbidden_lease_is_said_once_and_nobody_drains(
    api: KubernetesApi, cluster: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler")
    cluster.forbidden.add(("get", "leases"))
    a = replica(api, Clocks(), "a")
    for _ in range(3):
        assert not await a.try_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"drain lease {NS}/{NAME} cannot be held (forbidden: forbidden to get leases")


async def test_the_shipped_lease_role_grants_exactly_what_election_asks(
    api: KubernetesApi, cluster: FakeKubernetes
) -> None:
    clocks = Clocks()
    a = replica(api, clocks, "a")
    assert await a.try_once()  # get (not found), create
    clocks.now += 5
    assert await a.try_once()  # get, update
    await a.release()  # get, update
    verbs = {"GET": "get", "POST": "create", "PUT": "update"}
    asked = {(verbs[r.method], r.path.rsplit("/", 1)[-1] if r.method != "POST" else None) for r in cluster.requests}
    role = next(
        r for r in load_documents(ROOT / "manifests" / "overlays" / "drain" / "lease-rbac.yaml") if r["kind"] == "Role"
    )
    granted = {
        (verb, name) for rule in role["rules"] for verb in rule["verbs"] for name in rule.get("resourceNames", [None])
    }
    assert all(
        rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"] for rule in role["rules"]
    )
    assert asked == granted == {("create", None), ("get", NAME), ("update", NAME)}
