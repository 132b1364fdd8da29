"""`python -m parnasc`: the `parnasc` command (what `torchrun -m parnasc` runs in every process)."""

from parnasc.cli import main

if __name__ == "__main__":
    main()
