"""Helpers with no B-cos in them, shared by several packages: files written whole (`atomic`), and a
dataclass whose fields are a command line's options (`options`)."""
