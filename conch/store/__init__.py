"""Durable session graphs and attachments.

A session is a graph of nodes (user input, model reply, code cell, output, sub-call,
answer, ...) with a leaf; the active path runs from the leaf to the root. Each turn is one
atomic, idempotent commit (``SessionStore.commit_turn``) by the session's single writer,
who holds a fenced lease. Stores load the active path with one recursive query, so resuming
a session costs O(active path), not O(history). Orphaned branches stay on disk until the
host tombstones and vacuums them.

Backends: ``SqliteSessionStore`` (embedded default, one file in WAL mode) and
``PostgresSessionStore`` (psycopg 3, async, pooled); both keep the same ``SessionStore``
contract and are opened through a ``SessionStoreFactory``. Attachments live in an
``AttachmentStore`` (in memory, or content-addressed files), one namespace per session.
"""

from conch.store._attachments import (
    AttachmentRef,
    AttachmentStore,
    FilesystemAttachmentStore,
    InMemoryAttachmentStore,
)
from conch.store._lease import DEFAULT_LEASE_TTL_S, Lease
from conch.store._nodes import (
    CommitResult,
    Node,
    NodeKind,
    SessionRecord,
    TurnCommit,
    new_id,
)
from conch.store._postgres import PostgresSessionStore, PostgresSessionStoreFactory
from conch.store._protocol import SessionStore, SessionStoreFactory
from conch.store._schema import SCHEMA_VERSION
from conch.store._sqlite import SqliteSessionStore, SqliteSessionStoreFactory

__all__ = [
    "DEFAULT_LEASE_TTL_S",
    "SCHEMA_VERSION",
    "AttachmentRef",
    "AttachmentStore",
    "CommitResult",
    "FilesystemAttachmentStore",
    "InMemoryAttachmentStore",
    "Lease",
    "Node",
    "NodeKind",
    "PostgresSessionStore",
    "PostgresSessionStoreFactory",
    "SessionRecord",
    "SessionStore",
    "SessionStoreFactory",
    "SqliteSessionStore",
    "SqliteSessionStoreFactory",
    "TurnCommit",
    "new_id",
]
