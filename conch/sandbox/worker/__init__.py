"""The in-sandbox worker: a stdlib-only REPL agent, and the wire protocol it speaks.

``agent.py`` runs inside every backend; ``protocol.py`` is shared by the worker and the host.
The host starts the worker as ``python -I agent.py CONFIG_JSON``, where CONFIG_JSON sets the
working directory, scratch directory, resource limits and whether a keeper process reports
the worker's exit status (used where the worker's parent would otherwise be the host).
"""

from pathlib import Path

WORKER_DIR = Path(__file__).resolve().parent
AGENT_PATH = WORKER_DIR / "agent.py"

__all__ = ["AGENT_PATH", "WORKER_DIR"]
