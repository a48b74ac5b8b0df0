"""Stacks wire the constructs of modules/ together and own the outputs."""
