"""Pure models of what happens around the scaler: used by `replay`, the demo, the tests and bench.

settings.py says what the model is told (the worker set, the policy); workers.py
is the worker side (pods, Celery, Airflow's retries); control.py the control
side around it (KEDA, the HPA, and the scaler's own decision, deletion costs and
pre-warm); results.py what a run measured. Standard library and scaler.rules only;
nothing in the running service imports it.
"""
