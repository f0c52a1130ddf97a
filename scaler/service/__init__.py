"""The running service `serve` starts: gRPC, the shared caches, the watchers, the metrics and the loops.

server.py assembles it. KEDA's calls go through servicer.py, which looks up the
database's shared snapshot (database_caches.py) and asks scaled_objects.py for
the answer; scaled_objects.py is the one place a ScaledObject is registered, its
decision made and recorded. Loops that act on the cluster (the deletion-cost
reconciler, and the drain loop next) sit beside the server and never on KEDA's call path.
It reaches the outside only through scaler.adapters.
"""
