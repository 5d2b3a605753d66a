"""Benchmarks of the search service's building blocks; each module has a command line."""
