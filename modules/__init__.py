"""Reusable Orthweb constructs, one per concern. Each keeps what it creates as public attributes."""
