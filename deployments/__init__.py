"""deployments: how flows run on a schedule or on an event (see deployments/nightly.py)."""

from deployments.nightly import (  # noqa: F401
    NIGHTLY_CRON,
    NIGHTLY_NAME,
    RETRAIN_NAME,
    all_deployments,
    apply_all,
    drift_trigger,
    nightly_deployment,
    retrain_deployment,
    serve_all,
)
