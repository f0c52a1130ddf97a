"""Leader election on a coordination.k8s.io Lease: with several replicas, one drains.

Every third of the Lease's duration the replica tries to take or renew it
(rules/lease.py says when it may; the API server's resourceVersion check makes
sure only one wins a race). It leads for two thirds of the duration after the
start of its last successful write, so it has stopped acting before another
replica may take the Lease: the others wait the whole duration since the last
renewal. On a clean stop the holder releases it, and the next takes over at its
next try instead of after the duration.

A Kubernetes failure only ends leading (said once, with the metric); it never
reaches KEDA's calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from scaler.adapters.kubernetes.api import KubernetesApi, KubernetesError
from scaler.rules.lease import lease_spec, may_hold, parse_lease, released_spec
from scaler.rules.snapshot import Clock

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class LeaseLeadership:
    def __init__(
        self,
        api: KubernetesApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        on_change: Callable[[bool], None] = lambda leading: None,
        wall_clock: Clock = time.time,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.api = api
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration = duration
        self._on_change = on_change
        self._wall_clock, self._clock, self._sleep = wall_clock, clock, sleep
        self._leads_until = float("-inf")
        self._was_leading = False
        self._problem: str | None = None

    def leading(self) -> bool:
        return self._clock() < self._leads_until

    async def run_forever(self) -> None:
        while True:
            try:
                await self.try_once()
            except Exception:
                log.exception("drain leader election round failed")
            await self._sleep(self.duration / 3)

    async def try_once(self) -> bool:
        """Take or renew the Lease if this replica may; whether it leads now."""
        started = self._clock()
        try:
            body = await self.api.read_lease(self.namespace, self.name)
            record = None if body is None else parse_lease(body)
            now = self._wall_clock()
            if may_hold(record, self.identity, now):
                spec = lease_spec(record, self.identity, now, self.duration)
                await self.api.write_lease(
                    self.namespace, self.name, spec, None if record is None else record.resource_version
                )
                self._leads_until = started + self.duration * 2 / 3
            self._said(None)
        except KubernetesError as error:
            if error.kind != "conflict":  # a lost race is the election working, not a problem
                self._said(f"{error.kind}: {error}")
        self._changed()
        return self.leading()

    async def release(self) -> None:
        """Give the Lease up if this replica holds it, so another takes over at once."""
        if not self.leading():
            return
        self._leads_until = float("-inf")
        try:
            body = await self.api.read_lease(self.namespace, self.name)
            if body is not None and (record := parse_lease(body)).holder == self.identity:
                await self.api.write_lease(self.namespace, self.name, released_spec(record), record.resource_version)
        except KubernetesError as error:
            log.warning("drain lease %s/%s not released: %s", self.namespace, self.name, error)
        self._changed()

    def _changed(self) -> None:
        leading = self.leading()
        if leading != self._was_leading:
            self._was_leading = leading
            log.info(
                "drain lease %s/%s: %s",
                self.namespace,
                self.name,
                f"{self.identity} leads: this replica drains" if leading else f"{self.identity} no longer leads",
            )
            self._on_change(leading)

    def _said(self, problem: str | None) -> None:
        before, self._problem = self._problem, problem
        if problem is not None and problem != before:
            log.warning(
                "drain lease %s/%s cannot be held (%s); this replica does not drain until it can",
                self.namespace,
                self.name,
                problem,
            )
