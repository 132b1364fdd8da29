"""Deployment: ONNX export and the per-core schedule, the multicore runtime, benchmarks."""
