"""Readers of the Airflow metadata database, one module per backend.

A backend knows SQL and its driver, and nothing about gRPC: it turns a
connection target into `SnapshotRow`s (see snapshot.py) or a DatabaseUnavailable.
"""
