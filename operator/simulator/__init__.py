"""The trace-driven simulator of placement policies (both evaluation tracks)."""
