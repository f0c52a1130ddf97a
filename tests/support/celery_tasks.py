"""The Celery app the drain tests' real workers run: Airflow's queue layout and one task that records its worker.

Airflow's Celery executor declares its queues with `task_default_queue` and
`task_default_exchange` both `[operators] default_queue` ("default"); so does this.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery  # type: ignore[import-untyped]

app = Celery("drain-tests", broker=os.environ.get("DRAIN_TEST_BROKER", "memory://"), set_as_current=False)
app.conf.update(
    task_default_queue="default",
    task_default_exchange="default",
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="record", bind=True)  # type: ignore[untyped-decorator]
def record(self: object, tag: str, seconds: float = 0.0) -> None:
    """Write which worker runs task `tag` (`<tag>.started`, Airflow's task_instance.hostname in effect), run for
    `seconds`, then write it again as done (`<tag>`)."""
    hostname = self.request.hostname  # type: ignore[attr-defined]
    records = Path(os.environ["DRAIN_TEST_RECORDS"])
    (records / f"{tag}.started").write_text(hostname)
    time.sleep(seconds)
    (records / tag).write_text(hostname)
