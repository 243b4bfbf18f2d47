"""Helpers with no B-cos in them, shared by several packages: files written whole (`atomic`), a
dataclass whose fields are a command line's options (`options`), and exceptions as one-line messages (`errors`)."""
