"""Pictures and terminal output: the supernet picture, the compile summary, the live display."""
