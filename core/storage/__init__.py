"""Bytes: the object store, uploaded files and their validation, the storage quota,
garbage collection."""
