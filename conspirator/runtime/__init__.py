"""The worker runtime: ``input_tensor(shape, dtype)`` and ``serve(fn)`` (issue 6)."""
