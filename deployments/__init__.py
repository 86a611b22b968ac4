"""deployments: how flows run on a schedule or on an event; see deployments/nightly.py."""
