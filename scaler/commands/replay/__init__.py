"""`airflow-keda-scaler replay`: a window of an Airflow database's history through the simulation.

trace.py turns the rows into the model's arrivals and what really happened (pure);
command.py reads, replays each policy (policies.py: the policies compared, a process each) and
reports; report.py and plot.py show it.
"""
