"""`python -m scaler` is the same as the `airflow-keda-scaler` command."""

from scaler.commands.main import main

raise SystemExit(main())
