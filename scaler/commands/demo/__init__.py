"""`airflow-keda-scaler demo`: the real scaler on a throwaway Airflow database, live.

run.py drives the real server against an embedded PostgreSQL holding Airflow's
real tables (both from scaler.fixtures), with the synthetic workload of
workload.py and the package's model (scaler.simulation) in workers.py; plot.py
draws the run.
"""
