"""Pure: Airflow's task_instance.hostname -> the worker it names, and the pod that has that name.

Airflow records `[core] hostname_callable` of the worker that runs a task
(default socket.getfqdn). In Kubernetes that is the pod's hostname: the pod's
name (cut to 63 characters, as the kubelet does), or `spec.hostname` when the
pod sets one, either alone or as an FQDN such as
`<pod>.<service>.<namespace>.svc.cluster.local` when the pod has a subdomain
(StatefulSet pods behind a headless Service). Some installations record the
pod IP instead (`airflow.utils.net.get_host_ip_address`). One worker, however
it is spelt, is one key here.
"""

from __future__ import annotations

import functools
import ipaddress

# The kubelet gives a pod the hostname of its name's first 63 characters, with a trailing '-' or '.' cut.
HOSTNAME_LIMIT = 63


@functools.lru_cache(maxsize=65536)  # every decision asks again for the same few hostnames
def worker_key(hostname: str | None) -> str | None:
    """The worker a recorded hostname names: its first DNS label, lower-cased; an IP address as is.

    >>> worker_key("airflow-worker-2.airflow-worker.airflow.svc.cluster.local")
    'airflow-worker-2'
    >>> worker_key("Airflow-Worker-7d9c-x2k4q")
    'airflow-worker-7d9c-x2k4q'
    >>> worker_key("10.1.2.3")
    '10.1.2.3'
    >>> worker_key("  ") is None
    True
    """
    if hostname is None:
        return None
    name = hostname.strip().lower().rstrip(".")
    if not name:
        return None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.split(".", 1)[0]


def pod_hostname(name: str, spec_hostname: str | None = None) -> str:
    """The hostname the kubelet gives a pod: `spec.hostname`, else its name's first 63 characters.

    >>> pod_hostname("airflow-worker-0"), pod_hostname("w" * 62 + "-x"), pod_hostname("w-0", "custom")
    ('airflow-worker-0', 'wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww', 'custom')
    """
    return spec_hostname or name[:HOSTNAME_LIMIT].rstrip("-.")


def celery_nodename(hostname: str) -> str:
    """The Celery worker's node name on a pod: Celery's default `celery@%h` (`airflow celery worker` keeps it).

    >>> celery_nodename("airflow-worker-0")
    'celery@airflow-worker-0'
    """
    return f"celery@{hostname}"


def pod_keys(name: str, spec_hostname: str | None = None, pod_ip: str | None = None) -> frozenset[str]:
    """Every worker key under which Airflow may have recorded this pod.

    >>> sorted(pod_keys("w" * 70, pod_ip="10.0.0.9"))[0]
    '10.0.0.9'
    >>> len(max(pod_keys("w" * 70), key=len))
    63
    """
    hostname = pod_hostname(name, spec_hostname)
    keys = {key for key in (worker_key(hostname), worker_key(pod_ip)) if key is not None}
    return frozenset(keys)
