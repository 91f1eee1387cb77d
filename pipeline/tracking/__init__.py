"""MLflow tracking: where runs are recorded (uri.py), the client and experiments (client.py),
one MLflow run per run and per sweep (runs.py), metrics batched from Lightning (logger.py), and
what it takes to run a recorded run again, without secrets (provenance.py)."""
