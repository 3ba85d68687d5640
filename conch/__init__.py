"""conch: a runtime for Recursive Language Models.

A model answers a question about a context of any size by writing code in a sandboxed
REPL that holds the context as a variable, and by calling models (itself included) on
pieces of it. See ``DESIGN.md`` in the shared folder for the layer map.
"""

from conch.errors import ConchError

__all__ = ["ConchError", "__version__"]
__version__ = "0.1.0"
