"""The Kubernetes side of safe scale-down: access, API wrappers named by verb, and the deletion-cost reconciler.

Nothing here is on the path of a KEDA call: the reconciler runs beside the
server and the decision never waits for, or fails because of, the Kubernetes API.
"""
