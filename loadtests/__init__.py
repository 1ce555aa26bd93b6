"""Load tests for Sluice: the reference wrk benchmark (bench.py) and a locust scenario (locustfile.py)."""
