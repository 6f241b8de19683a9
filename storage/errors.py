"""Errors raised by the storage layer.

Callers (the CLI, the DICOM node) turn these into one line for the user or a
DIMSE failure status; the message never carries a traceback or a password.
"""

from __future__ import annotations


class StorageError(Exception):
    """The database cannot be reached, is at the wrong revision, or refused a write."""


class SchemaOutOfDate(StorageError):
    """The database is reachable but not at the migration head this code expects."""


class InvalidRecord(StorageError, ValueError):
    """An instance record that cannot be stored as given (e.g. a UID over 64 characters)."""
