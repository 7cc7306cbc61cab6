"""Registered cases, one module per op (see ``tops.precision.registry``)."""
