"""cli: the `rqsid` command, the top layer (it may use every other package; none uses it).

`cli.main` builds the parser from the command modules: `data` (import, demo-catalog, embed), `sids`
(fit, sids, report, prune), `generator` (train, evaluate), `orchestration` (nightly, reindex, retrain,
drift, serve, server, ui) and `study`. Library commands never import Prefect, MLflow or GX, and every
module imports its heavy dependencies inside the command that needs them, so `rqsid --help` stays fast.
"""
