"""The .pnas language: grammar, parser with source spans, canonical formatter, the operations it
knows (the op registry), the validated Spec and the resolver that makes it."""
