"""Adapters to the outside, one package each: the Airflow databases, the Kubernetes API (the Celery broker next).

An adapter knows its driver or client library and the rules' data shapes
(scaler.rules), nothing of gRPC, the service or another adapter: adapters are
independent of each other (lint-imports checks it).
"""
