"""Test doubles that speak real protocols (HTTP), shared by tests and benchmarks."""
