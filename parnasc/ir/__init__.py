"""The IR: the supernet graph with shapes and costs, the front end that builds it from text,
its passes (shapes, costs, prune, verify) and its printers (text, JSON, .pnas)."""
