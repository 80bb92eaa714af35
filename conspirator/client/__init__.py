"""Client SDK of the data path (issue 6)."""
