"""The search: IR -> torch supernet, cost models and the loss of equation (12), the search and
derivation, measured latency tables, retraining."""
