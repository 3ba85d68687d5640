"""Quality benchmarks of conch's RLM: task generators, scoring, runners and summaries.

Each module owns one benchmark end to end (``sniah``: RULER-style needle-in-a-haystack).
Tasks are generated offline and deterministically from a seed, so a figure can be reproduced
from its command line alone. Benchmarks are not tests: they print figures, never assert them.
"""
