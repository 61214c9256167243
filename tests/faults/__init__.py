"""Fault-injection tests: the service's promise under duplicates, crashes, throttling, timeouts and races."""
