"""The .pnas language: grammar, parser with source spans, canonical formatter, validated Spec."""
