"""Pure: a Celery broker URL the operator configured (--broker NAME=URL), and the label it may be shown by.

The broker is the operator's, never a tenant's: its URL comes from the scaler's
own configuration, and only `label` (scheme, hosts, virtual host or database
number) ever appears in a log line, an error or a metric. Redis and RabbitMQ
are the brokers the official Airflow chart offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from scaler.errors import shown

REDIS_SCHEMES = ("redis", "rediss")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
ACCEPTED_BROKERS = (
    "redis://host:6379/0 (also rediss://) or amqp://host:5672/vhost (also amqps://), with the login in the URL "
    "as Airflow's broker_url has it"
)


class BrokerUrlError(ValueError):
    """The text is not a broker URL the scaler accepts; the message never repeats it."""


@dataclass(frozen=True)
class BrokerTarget:
    """One Celery broker; `url` holds the secret, `label` is safe to show."""

    scheme: str
    label: str
    url: str = field(repr=False)


def parse_broker_url(url: str) -> BrokerTarget:
    """Check a broker URL's form; say what is wrong without repeating it.

    >>> parse_broker_url("redis://:s3cret@redis.airflow:6379/0").label
    'redis://redis.airflow:6379/0'
    >>> parse_broker_url("amqp://airflow:s3cret@rabbit/airflow").label
    'amqp://rabbit:5672/airflow'
    >>> parse_broker_url("redis://:s3cret@redis:port/0")
    Traceback (most recent call last):
    ...
    scaler.rules.broker_urls.BrokerUrlError: the port is not a number
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BrokerUrlError("the port is not a number") from None
    scheme = parts.scheme.lower()
    if scheme not in REDIS_SCHEMES + AMQP_SCHEMES:
        raise BrokerUrlError(f"unsupported scheme '{shown(scheme, 20)}'")
    if not parts.hostname:
        raise BrokerUrlError("no host")
    default = 6379 if scheme in REDIS_SCHEMES else 5672
    path = parts.path.lstrip("/") or ("0" if scheme in REDIS_SCHEMES else "/")
    label = shown(f"{scheme}://{parts.hostname}:{port or default}/{path}", 256)
    return BrokerTarget(scheme, label, url)
