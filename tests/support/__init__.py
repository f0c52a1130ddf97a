"""What the tests use besides the code under test: real servers, KEDA's client, a Kubernetes API, a proxy."""
