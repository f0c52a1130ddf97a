"""`python -m scaler` is the same as the `airflow-keda-scaler` command."""

from scaler.cli import main

raise SystemExit(main())
