"""airflow-keda-scaler: a KEDA external scaler that sizes Airflow Celery workers."""

__version__ = "0.1.0"
