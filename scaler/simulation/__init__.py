"""Pure models of what happens around the scaler (KEDA, the HPA): used by the demo, the tests and bench.

Standard library only; nothing in the core (serve, check) imports it.
"""
