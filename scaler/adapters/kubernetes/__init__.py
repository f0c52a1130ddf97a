"""The Kubernetes API as safe scale-down uses it: access (in-cluster, kubeconfig, none) and the calls, named by verb.

Nothing here is on the path of a KEDA call: the deletion-cost reconciler
(scaler.service) calls these beside the server, and the decision never waits for,
or fails because of, the Kubernetes API.
"""
