"""Maintenance generators: files in the repository generated from the code, each checked by a test."""
