"""Pure rules: what the scaler decides and the data it decides from. No I/O, not even indirectly.

A new rule goes here when it can be tested with a table of cases: trigger
metadata, the decision, pre-warm, the busy-worker floor, deletion costs,
admission, the memory budget, and the shapes a database read returns
(snapshot.py, schedule.py, history.py). The running service (scaler.service),
the adapters (scaler.adapters) and the commands call these; these call none of them.
"""
