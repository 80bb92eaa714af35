"""The real local Kubernetes cluster of the end-to-end tests (see e2e/README.md).

This package lives in e2e/ and is imported with e2e/ (never the repository root) on sys.path:
the root holds the `operator/` source directory, which would shadow the standard library's
`operator` module.  e2e/cluster.sh runs it that way.
"""
