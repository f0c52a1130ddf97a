"""`airflow-keda-scaler demo` and its throwaway Airflow database; never imported by `serve` or `check`.

run.py drives the real server against an embedded PostgreSQL (embedded_postgres.py)
holding Airflow's real tables (airflow_schema/), with the synthetic workload of
workload.py and the KEDA model of scaler.simulation; plot.py draws the run.
The tests and the benchmarks use the embedded database and the tables too.
"""
