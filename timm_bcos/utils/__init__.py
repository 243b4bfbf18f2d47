"""Helpers with no B-cos in them, shared by several packages: files written whole (`atomic`)."""
