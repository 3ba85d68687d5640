"""Shared pytest configuration. Fixtures specific to one layer live in that layer's conftest."""
