"""The one exception hierarchy of conch.

Every error a user can cause says what was wrong and what to do about it. Layers raise
the most specific class that fits; callers catch the family they can handle.
"""

from __future__ import annotations


class ConchError(Exception):
    """Root of every error conch raises on purpose."""


class ConfigurationError(ConchError, ValueError):
    """An option, argument or file given to conch is invalid."""


# --- sandbox -------------------------------------------------------------------------


class SandboxError(ConchError):
    """Something went wrong in an execution environment (not in the user's code)."""


class SandboxUnavailableError(SandboxError):
    """A backend cannot run on this machine (missing binary, kernel feature, service)."""


class SessionClosedError(SandboxError):
    """An operation named a session that has ended or an environment that was cleaned up."""


class ProtocolError(SandboxError):
    """The host and the in-sandbox worker disagreed on the wire (garbled or unknown frame)."""


class SnapshotError(SandboxError):
    """A snapshot could not be created, found, verified or restored."""


class SnapshotNotFoundError(SnapshotError, LookupError):
    """The snapshot id is unknown (never created, or deleted)."""


class SnapshotCorruptedError(SnapshotError):
    """A snapshot's stored data does not match its recorded hash."""


class SnapshotLimitError(SnapshotError):
    """The session already holds the maximum number of snapshots."""


class SnapshotNameError(SnapshotError):
    """The snapshot name is invalid or already used in this session."""


class SnapshotSessionMismatchError(SnapshotError):
    """A snapshot of one session was asked to be restored into another."""


# --- models ----------------------------------------------------------------------------


class ModelError(ConchError):
    """A language model call failed (provider, transport or response)."""


class ModelAuthError(ModelError):
    """The provider refused the credentials (401/403)."""


class ModelNotFoundError(ModelError):
    """The provider does not know the model or endpoint (404)."""


class ModelBadRequestError(ModelError):
    """The provider rejected the request as malformed (400/422)."""


class ModelRateLimitError(ModelError):
    """The provider kept answering 429 after every retry."""


class ModelConnectionError(ModelError):
    """The endpoint could not be reached, hung, or dropped the connection."""


class ModelResponseError(ModelError):
    """The provider answered with something that is not a usable completion."""


class ModelUnavailableError(ModelError):
    """A local model is not installed or cannot be loaded."""


# --- validation ------------------------------------------------------------------------


class ValidationConfigError(ConfigurationError):
    """A thesaurus or validator setting is invalid (missing file, bad JSON, conflicts)."""


# --- budget and the recursive loop -----------------------------------------------------


class BudgetExceededError(ConchError):
    """A limit of the shared budget ledger was reached."""


# --- stores and sessions ---------------------------------------------------------------


class StoreError(ConchError):
    """A session or attachment store failed or was given invalid data."""


class StoreSchemaError(StoreError):
    """The store's schema is not one this version of conch can use (e.g. from the future)."""


class StoreCorruptedError(StoreError):
    """The store file is not a database conch can read."""


class SessionNotFoundError(StoreError, LookupError):
    """No session with that id exists in the store."""


class NodeNotFoundError(StoreError, LookupError):
    """No node with that id exists in the session (or it was tombstoned)."""


class LeaseConflictError(StoreError):
    """Another writer holds the session's lease, or this writer's lease was taken over."""


class AttachmentNotFoundError(StoreError, LookupError):
    """The attachment does not exist or belongs to another session."""


# --- runtime --------------------------------------------------------------------------------


class RuntimeStateError(ConchError):
    """The runtime or session is not in a state that allows the call (closed, parked)."""


class SessionParkedError(RuntimeStateError):
    """The session graph was released by parking; resume the session to use it again."""


class PluginError(ConchError):
    """A plugin failed in a hook or broke the hook's contract (the message names it)."""


class BackgroundTaskNotFoundError(ConchError, LookupError):
    """The task id is unknown to the host (never started here, or forgotten)."""
