"""parnasc: a spec-to-model compiler for resource-aware neural architecture search."""

__version__ = "0.1.0"
