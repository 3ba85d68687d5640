"""Shared pytest configuration. Fixtures specific to one layer live in that layer's conftest."""

import os

from hypothesis import settings

# No per-example deadline: the machines are small and shared, and a slow example is not a bug.
# Under CI the examples are derandomized, so a run is repeatable and a red CI is reproducible.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")
