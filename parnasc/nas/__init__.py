"""The search: IR -> torch supernet, cost models and the loss of equation (12), settings and
recipes, the search and derivation, run records and resume rules, measured latency tables,
retraining."""
