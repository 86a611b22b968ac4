"""Orchestration commands of the `rqsid` CLI: nightly (the main job), reindex, retrain, drift, serve,
server, ui. Prefect, Dask and MLflow are imported only when a command runs.

With no flags, `rqsid nightly` runs on the synthetic demo catalog with embedded defaults: a local
Prefect server it starts (the in-process temporary server is slow once Dask worker processes join),
a Dask LocalCluster and MLflow on sqlite, all under the project home, with the "demo" config profile
(rqsid.config.PROFILES) keeping training short.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

from cli.options import add_config_flags, config_from
from rqsid import RqsidError
from rqsid.home import ProjectHome


def _add_catalog_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", metavar="PATH",
                   help="catalog: a Beauty or Scientific folder, a folder with catalog.*, or a file (default: synthetic demo)")
    p.add_argument("--interactions", metavar="PATH", help="interactions file (default: those that come with the catalog)")


def register(subparsers) -> None:
    p = subparsers.add_parser("nightly", help="one night now: drift watch -> re-index -> retrain (demo catalog by default), "
                              "run as a run of the nightly deployment")
    _add_catalog_flags(p)
    add_config_flags(p)
    p.add_argument("--no-train", action="store_true", help="stop after re-indexing")
    p.set_defaults(func=cmd_nightly)

    p = subparsers.add_parser("reindex", help="build and publish an index version (gated; nothing published on failure)")
    _add_catalog_flags(p)
    add_config_flags(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--refit", dest="refit", action="store_const", const=True, help="always fit a new tokenizer")
    group.add_argument("--reuse", dest="refit", action="store_const", const=False,
                       help="reuse the published tokenizer (stable SIDs) even when drift is over the thresholds")
    p.set_defaults(func=cmd_reindex, refit=None)

    p = subparsers.add_parser("retrain", help="train, evaluate and register the generator on a published index")
    p.add_argument("--catalog-name", default=None, help="catalog whose index to use (default: demo)")
    p.add_argument("--index", dest="index_version", default=None, help="index version (default: the current one)")
    p.add_argument("--interactions", metavar="PATH", help="interactions file (default: those of the index's catalog)")
    add_config_flags(p)
    p.set_defaults(func=cmd_retrain)

    p = subparsers.add_parser("drift", help="compare a catalog with its published index; "
                              "emit rqsid.drift.detected over thresholds")
    p.add_argument("--catalog", metavar="PATH", help="catalog (default: synthetic demo)")
    add_config_flags(p)
    p.add_argument("--no-emit", action="store_true", help="measure only; do not emit the Prefect event")
    p.set_defaults(func=cmd_drift)

    p = subparsers.add_parser("serve", help="serve the nightly cron deployment and the drift-triggered retrain deployment")
    _add_catalog_flags(p)
    add_config_flags(p)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("server", help="run a local Prefect server (127.0.0.1, state under the project home)")
    p.add_argument("--port", type=int, default=4200)
    p.set_defaults(func=cmd_server)

    p = subparsers.add_parser("ui", help="run the MLflow UI over the project home's runs (127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)


# ---------------------------------------------------------------- running flows against a Prefect API


def resolve(args: argparse.Namespace, demo: bool):
    """The command's config; on the demo catalog the "demo" profile fills what --config and --set leave open."""
    from rqsid.checkpoints import reach

    config = config_from(args, profile="demo" if demo else None)
    reach("ready")  # imports done, nothing checked, locked or started yet
    return config


def _catalog_lock(catalog_name: str, command: str):
    """The catalog's run lock, taken before any flow run starts, so a refusal is one line (not a failed flow run
    and its logged traceback); the flows take it again (re-entrant), which covers deployment runs."""
    from rqsid.locks import catalog_lock

    return catalog_lock(ProjectHome.default().root, catalog_name, what=f"rqsid {command}")


def _checked(args: argparse.Namespace, config, fits: bool = True) -> str:
    """Validate the catalog (and interactions) before any lock, server or flow run: bad input is one line and
    exit 2 before anything is embedded or fitted. Returns the catalog's name."""
    from rqsid.sources import catalog_name_of, check_source, is_demo

    catalog, interactions = getattr(args, "catalog", None), getattr(args, "interactions", None)
    if not is_demo(catalog) or interactions:
        print(check_source(catalog, interactions, config.quantizer.codebook_size if fits else None), flush=True)
    return catalog_name_of(catalog)


def _run(flow_fn, config, **params) -> dict:
    from tasks.services import prefect_api

    with prefect_api(config):
        started = time.perf_counter()
        result = flow_fn(config=config, **params)
        result["wall_s"] = round(time.perf_counter() - started, 3)
    return result


def cmd_nightly(args: argparse.Namespace) -> int:
    from deployments.nightly import run_nightly_now

    config = resolve(args, demo=args.catalog is None)
    # a night started by hand is a run of the nightly deployment, as scheduled ones are
    with _catalog_lock(_checked(args, config), "nightly"):
        result = _run(run_nightly_now, config, catalog=args.catalog, interactions=args.interactions, train=not args.no_train)
    _print_drift(result["drift"])
    _print_index(result["reindex"])
    if result["retrain"]:
        _print_model(result["retrain"])
    _print_timing(result)
    _print_where(result["reindex"])
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from flows.reindex import reindex

    config = resolve(args, demo=args.catalog is None)
    with _catalog_lock(_checked(args, config), "reindex"):
        result = _run(reindex, config, catalog=args.catalog, interactions=args.interactions, refit=args.refit)
    _print_index(result)
    _print_timing({"wall_s": result["wall_s"], "timing": {"flows": [result["timing"]]}})
    _print_where(result)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain
    from rqsid.sources import read_interactions_source
    from rqsid.versioning import IndexRegistry

    config = resolve(args, demo=args.catalog_name in (None, "demo"))
    name = args.catalog_name or "demo"
    index = IndexRegistry(ProjectHome.default().indexes / name)  # bad input: one line before any server or flow
    if (index.path(args.index_version) if args.index_version else index.current_path()) is None:
        raise RqsidError(f"catalog {name!r} has no published index; run `rqsid reindex` first")
    if args.interactions:
        read_interactions_source(args.interactions)
    with _catalog_lock(name, "retrain"):
        result = _run(retrain, config, catalog_name=args.catalog_name, index_version=args.index_version,
                      interactions=args.interactions)
    _print_model(result)
    _print_timing({"wall_s": result["wall_s"], "timing": {"flows": [result["timing"]]}})
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from flows.drift_watch import drift_watch

    config = resolve(args, demo=args.catalog is None)
    with _catalog_lock(_checked(args, config, fits=False), "drift"):
        result = _run(drift_watch, config, catalog=args.catalog, emit=not args.no_emit)
    _print_drift(result)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.nightly import NIGHTLY_CRON, serve_all
    from tasks.services import prefect_api

    config = resolve(args, demo=args.catalog is None)
    _checked(args, config)
    with prefect_api(config) as api:  # prefect's runner stops its flow runs on SIGTERM; Ctrl-C ends serve_all
        print(f"serving deployments 'nightly' (cron {NIGHTLY_CRON} UTC) and 'retrain-on-drift' "
              f"(trigger rqsid.drift.detected) against {api}; Ctrl-C or SIGTERM stops", flush=True)
        with _interrupted_by_signals():
            serve_all(args.catalog, args.interactions, config)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from tasks.home_server import join, leave, running

    home = ProjectHome.default().activate()
    with _interrupted_by_signals():
        server = join(home, args.port)
        try:
            print(f"Prefect server of {home.root}: {server.url} (API {server.api_url}), "
                  f"{'started' if server.started else 'already running'}; state in {home.prefect}", flush=True)
            print("rqsid commands of this home use it; it stops after this command and the last of them end "
                  "(Ctrl-C or SIGTERM ends this one). For the prefect CLI: "
                  f"export PREFECT_API_URL={server.api_url}", flush=True)
            while running(home) is not None:
                time.sleep(1.0)  # watching the server; a signal ends the wait at once
            print(f"the Prefect server of {home.root} stopped; see {home.root / 'server'}", flush=True)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            leave(home)


def cmd_ui(args: argparse.Namespace) -> int:
    from tasks.services import start_mlflow_ui
    from tasks.tracking import TRAINING_VIEW  # MLflow's UI opens its GenAI view unless the link asks otherwise

    home = ProjectHome.default().activate()
    with _interrupted_by_signals():
        handle = start_mlflow_ui(home, args.port)
        try:
            print(f"MLflow UI: {handle.url}/#/?{TRAINING_VIEW} (store {home.mlflow_uri}); Ctrl-C or SIGTERM stops", flush=True)
            handle.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            handle.stop(timeout_s=10.0)
    return 0


@contextmanager
def _interrupted_by_signals():
    """SIGTERM (systemd, supervisord, docker stop) and SIGHUP end the block as Ctrl-C does, so that the
    `finally` that stops child servers runs. SIGINT is set too: a command started in the background of a
    non-interactive shell (`rqsid ui &` in a script) inherits SIGINT ignored, and Python then installs no
    Ctrl-C handler, so `kill -INT` would leave it and its servers running."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    before = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------- output


def _print_drift(result: dict) -> None:
    if result.get("index_version") is None:
        print(f"drift: {result['catalog_name']} has no published index yet (first run fits one)")
        return
    state = "DRIFT: " + "; ".join(result["exceeded"]) if result["drifted"] else "below thresholds"
    print(f"drift vs {result['index_version']}: {result['n_new']} new, {result['n_changed']} changed, "
          f"{result['n_removed']} removed of {result['n_items']} items -> {state}"
          + (f" (event {result['event_id']})" if result.get("event_id") else ""))
    behaviour = result.get("behaviour")
    if behaviour:
        figures = (f"Recall@10 {behaviour['recall_at_10']:.4f} vs {behaviour['registered_recall_at_10']:.4f} at registration"
                   if behaviour["recall_at_10"] is not None and behaviour["registered_recall_at_10"] is not None else "")
        state = behaviour["note"] or "within the margin"
        if behaviour["drifted"]:
            state = "DRIFT: " + "; ".join(behaviour["exceeded"])
        print(f"behaviour of champion v{behaviour['champion_version']} on {behaviour['n_cases']} newer interactions: "
              f"{figures} -> {state}")


def _print_index(result: dict) -> None:
    if result["reused"]:
        how = "reused (same inputs)"
    else:
        how = "tokenizer refitted" if result["refit"] else "tokenizer reused, SIDs kept stable"
    print(f"index {result['index_version']} for {result['catalog_name']}: {how}; pruning K={result['k']}")
    changes = result.get("sid_changes")
    if changes:
        print(f"  SIDs vs previous version: {changes['sids_changed']} changed, {changes['sids_kept']} kept "
              f"of {changes['items_in_both']} items present in both")


def _print_model(result: dict) -> None:
    valid, test = result["metrics"]["valid"]["all"], result["metrics"]["test"]["all"]
    print(f"generator {result['model_name']} v{result['model_version']}: valid R@10 {valid['recall@10']:.4f} "
          f"N@10 {valid['ndcg@10']:.4f}; test R@10 {test['recall@10']:.4f} N@10 {test['ndcg@10']:.4f}")
    contest = result["contest"]
    if contest["result"]:
        r = contest["result"]
        print(f"  contest on {r['n']} validation users of today's data ({r['rule']}): challenger "
              f"{r['challenger'][r['metric']]:.4f} vs champion v{contest['champion_version']} {r['champion'][r['metric']]:.4f}, "
              f"gain {r['mean_diff']:+.4f} (SE {r['se']:.4f}); champion {contest['serving']}")
    print("  promoted to champion" if result["promoted"] else f"  champion: v{result['champion']}")


def _print_timing(result: dict) -> None:
    flows = result["timing"]["flows"]
    print(f"\ntiming (wall {result['wall_s']:.1f} s including Prefect start-up of the flow runs):")
    print(f"  {'flow/stage':<26}{'wall s':>9}{'compute s':>11}")
    for f in flows:
        print(f"  {f['flow']:<26}{f['total_s']:>9.1f}{f['compute_s']:>11.1f}   orchestration {f['orchestration_share']:.0%}")
        for s in f["stages"]:
            print(f"    {s['name']:<24}{s['wall_s']:>9.1f}{s['compute_s']:>11.1f}")
    compute = sum(f["compute_s"] for f in flows)
    print(f"  library compute {compute:.1f} s of {result['wall_s']:.1f} s wall: "
          f"orchestration (Prefect, Dask, MLflow, GX) {1 - compute / result['wall_s']:.0%}")


def _print_where(index: dict) -> None:
    from tasks.tracking import TRAINING_VIEW

    home = ProjectHome.default()
    print(f"\nresults under {home.root}:")
    print(f"  index version  {index['index_path']}  (current: {Path(index['index_path']).parent.parent / 'current'})")
    print(f"  MLflow store   {home.mlflow_uri}  (artifacts {home.mlflow_artifacts})")
    print(f"  open the MLflow UI with:  rqsid ui   (then http://127.0.0.1:5000/#/?{TRAINING_VIEW})")
    print(f"  or:  mlflow ui --backend-store-uri {home.mlflow_uri} --host 127.0.0.1")


def dumps(result: dict) -> str:
    return json.dumps(result, indent=1, default=str)
