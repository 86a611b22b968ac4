"""rqsid: semantic IDs for product catalogs, with a watch on the hourglass of residual quantization.

The library is pure: plain functions and classes over numpy arrays, Arrow tables and torch
tensors. Orchestration (Prefect, Dask, MLflow, Great Expectations) lives in tasks/ and flows/.
"""

__version__ = "0.1.0"


class RqsidError(ValueError):
    """A problem with the user's input or configuration, worth a one-line message, not a traceback."""
