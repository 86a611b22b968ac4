"""flows: orchestration over the rqsid library (see docs/architecture.md)."""
