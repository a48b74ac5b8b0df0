"""Operator commands: run against a deployed site (or the local one)."""
