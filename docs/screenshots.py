"""The screenshots of the README's "Auditing a night" (docs/img/): three nights of a synthetic shop, run with the
`rqsid` command as a user would, then the MLflow and Prefect UIs over that home in headless Chromium.

    python docs/screenshots.py nights --home /tmp/audit-home   # three nights (on the home's own Prefect server)
    python docs/screenshots.py shoot --home /tmp/audit-home    # docs/img/*.png from that home

The shop has 3,600 items: night 1 sees 3,000 (its layer 2 fails the gate and is pruned), night 2 150 more, night
3 450 more (drift: new share 0.125 > 0.1). As measured (README, "Auditing a night"), nights 2 and 3 also found
the new items' reconstruction ratio near 2, over the bound of 1.5 then (1.9 now), so both refit the tokenizer
and prune again.
The nights run the demo profile with the RQ-VAE's balancing off and a gate bound of 0.5 (UNBALANCED, much as
tests/test_audit.py does): the balanced default keeps this shop's layer 2 near Gini 0.27, well inside the gate,
and there would be no hourglass to prune and audit.
Needs Debian's chromium and playwright (`pip install -e '.[test]'`); ports are taken free on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from rqsid.config import PROFILES  # noqa: E402
from rqsid.home import ProjectHome  # noqa: E402

DAYS = (3000, 3150, 3600)  # items each night sees
CATALOG = "shop"
SHOT_WIDTH = 1100  # screenshots are taken at 1400 x 900 and scaled to this width
# Plain Lloyd seeding and no code-usage term: the RQ-VAE makes the skewed layer 2 whose gate, pruning and audit
# trail the screenshots show (Gini 0.53 on night 1, 0.55 on night 3). The gate's bound (prune.gini_threshold,
# which gate.max_layer2_gini follows) is 0.5, not the default 0.4: on this shop's 256-code layer 2 no K reaches
# 0.4 (nor 0.48 on night 3) with collisions <= 0.2, so the layer would be dropped, the gate would fail and
# nothing would be published.
UNBALANCED = {"quantizer.kmeans_balance": 0.0, "quantizer.code_usage_weight": 0.0, "prune.gini_threshold": 0.5}


def _run(command: list[str], env: dict[str, str]) -> None:
    """A child command, stopped with this script (SIGTERM and Ctrl-C end it too)."""
    child = subprocess.Popen(command, env=env, cwd=REPO)
    try:
        if child.wait() != 0:
            raise SystemExit(f"{' '.join(command)} failed with {child.returncode}")
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait(timeout=60)


def nights(home: ProjectHome, prefect_api: str, ui_url: str) -> None:
    from rqsid.catalog import write_catalog, write_interactions
    from rqsid.synthetic import make_demo_catalog

    items, interactions = make_demo_catalog(n_items=DAYS[-1], seed=0)
    data = home.root / "input"
    history = write_interactions(interactions, data / "interactions.parquet")
    config = data / "demo.json"  # the demo profile, unbalanced, and where the UI is for links in the run summaries
    overrides = PROFILES["demo"] | UNBALANCED | {"orchestration.mlflow_ui_url": ui_url}
    sections: dict[str, dict] = {}
    for key, value in overrides.items():
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = value
    config.write_text(json.dumps(sections, indent=1))
    env = {**os.environ, "RQSID_HOME": str(home.root), "PREFECT_API_URL": prefect_api}
    for day, n in enumerate(DAYS, 1):
        catalog = write_catalog(items.slice(0, n), data / f"day{day}" / f"{CATALOG}.parquet")
        print(f"night {day}: {n} items", flush=True)
        _run([str(Path(sys.executable).parent / "rqsid"), "nightly", "--catalog", str(catalog),
              "--interactions", str(history), "--config", str(config)], env)


def _save(page, path: Path) -> None:
    """The page as a small PNG: scaled to SHOT_WIDTH and reduced to 256 colours (each well under 300 KB)."""
    from PIL import Image

    page.screenshot(path=path)
    image = Image.open(path).convert("RGB")
    image = image.resize((SHOT_WIDTH, round(image.height * SHOT_WIDTH / image.width)), Image.LANCZOS)
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path.relative_to(REPO)}: {path.stat().st_size // 1024} KB", flush=True)


# The tags table of a model version scrolls within five rows: let it show them all (the lineage is below them)
_UNFOLD = """cell => {
    for (let box = cell; box; box = box.parentElement) {
        if (box.scrollHeight > box.clientHeight + 2 && getComputedStyle(box).overflowY !== 'visible') {
            Object.assign(box.style, {maxHeight: 'none', height: 'auto', overflowY: 'visible'});
            return;
        }
    }
}"""


def shoot(home: ProjectHome, prefect_url: str, ui_url: str, out: Path) -> None:
    from browser import chromium_page, find_chromium, open_mlflow

    from flows.retrain import model_name
    from tasks.tracking import Tracker

    binary, why = find_chromium()
    if binary is None:
        raise SystemExit(f"no browser: {why}")
    client = Tracker(home.mlflow_uri, home.mlflow_artifacts).client
    experiment = client.get_experiment_by_name(CATALOG).experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"], max_results=500)
    named = lambda name: [r for r in runs if r.info.run_name == name]  # noqa: E731
    first_sids, first_reindex = named("sids")[0], named("reindex")[0]
    last_reindex, last_night = named("reindex")[-1], named("nightly")[-1]
    run_url = lambda run: f"{ui_url}/#/experiments/{experiment}/runs/{run.info.run_id}"  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    with chromium_page(binary) as page:
        open_mlflow(page, f"{ui_url}/#/experiments/{experiment}", "nightly")
        expander = "button[data-component-id*='runnamecellrenderer']"  # the [+] before a run with children
        page.locator(expander).first.click()  # the last night (newest first), then its three flows
        for flow in ("retrain", "reindex", "drift_watch"):
            page.locator("[role=row]", has=page.get_by_text(flow, exact=True)).first.locator(expander).click()
            page.wait_for_timeout(500)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.mouse.move(5, 5)  # no row highlighted under the pointer
        page.wait_for_timeout(1500)
        _save(page, out / "mlflow-run-tree.png")

        page.set_viewport_size({"width": 1400, "height": 1150})  # the whole summary and the run's metrics
        open_mlflow(page, run_url(last_night), "nightly")
        page.get_by_text("Show more", exact=True).first.click()  # the description is folded after a few lines
        page.get_by_text("Prefect flow run", exact=False).first.wait_for()
        page.get_by_role("link", name="drift_watch").first.wait_for()  # "Child runs" is loaded after the run
        page.wait_for_timeout(1000)
        _save(page, out / "mlflow-night-summary.png")

        for run, plot, name in ((first_sids, "pruning_before_after.png", "mlflow-sids-before-after.png"),
                                (last_reindex, "trend_balance.png", "mlflow-trend-three-nights.png")):
            page.set_viewport_size({"width": 1400, "height": 1000})  # the plots' axis labels too
            open_mlflow(page, run_url(run), run.info.run_name)
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("plots", exact=True).click()
            page.get_by_text(plot, exact=True).click()
            page.locator("img[src^='blob:']").first.wait_for()
            _save(page, out / name)

        version = client.get_registered_model(model_name(CATALOG)).latest_versions[-1].version
        page.set_viewport_size({"width": 1400, "height": 1720})  # the description and all the tags
        open_mlflow(page, f"{ui_url}/#/models/{model_name(CATALOG)}/versions/{version}", f"Version {version}")
        page.get_by_text("rqsid.lineage.tokenizer", exact=True).first.evaluate(_UNFOLD)
        page.wait_for_timeout(500)
        _save(page, out / "mlflow-registry-version.png")

        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{prefect_url}/runs/flow-run/{first_reindex.data.tags['prefect.flow_run_id']}")
        page.get_by_text("prune-adaptively", exact=False).first.wait_for()  # the graph shows the gate and pruning
        page.wait_for_timeout(3000)
        _save(page, out / "prefect-reindex-run.png")
        page.goto(f"{prefect_url}/runs/flow-run/{last_night.data.tags['prefect.flow_run_id']}")
        page.locator("li.p-tab#artifacts").click()  # (?tab=Artifacts in the address is not honoured)
        page.get_by_text(f"nightly-{CATALOG}", exact=True).first.click()  # the summary artifact's own page
        page.get_by_text("drift detected", exact=False).first.wait_for()
        _save(page, out / "prefect-night-summary.png")


def main() -> None:
    from tasks.services import free_port, start_mlflow_ui, start_prefect_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("nights", "shoot"))
    parser.add_argument("--home", required=True, type=Path, help="the project home of the three nights")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the servers below are stopped
    home = ProjectHome(args.home.resolve()).activate(override=True)
    ports = {}
    for name in ("ui-port", "prefect-port"):  # the links in the summaries name these ports: both steps use them
        saved = home.root / name
        ports[name] = int(saved.read_text()) if saved.exists() else free_port()
        saved.write_text(str(ports[name]))
    ui_port = ports["ui-port"]
    prefect = start_prefect_server(home, ports["prefect-port"])
    try:
        if args.step == "nights":
            nights(home, prefect.api_url, f"http://127.0.0.1:{ui_port}")
        else:
            with start_mlflow_ui(home, ui_port) as ui:
                shoot(home, prefect.url, ui.url, args.out)
    finally:
        prefect.stop()


if __name__ == "__main__":
    main()
