"""``eigenloop bench``: benchmarks that measure the product's claims (``efficacy``: does it learn)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

bench_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Benchmarks of the learning loop.")

# --quick: one training capture, one held-out capture, 60 decisions each; checks the wiring in
# about a minute once the bootstrap is cached (the same one the full run uses), says nothing
# about efficacy
QUICK = {"include": ["usdm_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz"], "epochs": 1,
         "max_decisions": 60, "probe_every": 0, "seeds": [0]}


def _fees(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--fees {text!r}: expected comma-separated numbers, e.g. 0,4.5")


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> ``[0, 1, 2]``; a ValueError that names the option otherwise."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


@bench_app.command("efficacy")
def efficacy(
    captures: Optional[str] = typer.Option(
        None, "--captures", help="comma-separated folders of Binance gz captures (spot/, usdm_futures/, "
        "coinm_futures/), file names unique across them [default: ../shared/data/exchange_binance,"
        "../shared/data/exchange_binance_2023-04]"),
    fees: str = typer.Option("0,4.5", "--fees", help="taker fee per side in bps, one run per value"),
    out: Path = typer.Option(Path("out/efficacy"), "--out", help="where summary.json, the PNG and records go"),
    quick: bool = typer.Option(False, "--quick", help="a one-minute wiring check, not a measurement"),
    holdout: str = typer.Option("*_20240809.gz", "--holdout", help="comma-separated file globs kept out of training"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="passes over the training captures"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="learner seeds, one run per seed and fee "
                                        "(default 0,1,2; --quick: 0)"),
    jobs: int = typer.Option(2, "--jobs", help="(fee, seed) runs in parallel processes"),
    set_: list[str] = typer.Option([], "--set", help="any EfficacyConfig field as key=JSON, e.g. --set lr=3e-3"),
) -> None:
    """Does the loop learn? Learned policy vs random, flat, imbalance heuristic and hindsight."""
    from daemon.cli.context import fail
    from daemon.tools.efficacy import EfficacyConfig, run_efficacy
    from daemon.tools.efficacy.markdown import render_markdown

    kw: dict = {"fees_bps": _fees(fees), "jobs": jobs, "holdout": [h for h in holdout.split(",") if h]}
    if captures is not None:  # else the config's default: both recorded sets
        kw["captures"] = captures
    if quick:
        kw.update(QUICK)
    if epochs is not None:
        kw["epochs"] = epochs
    for item in set_:
        key, _, value = item.partition("=")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    try:
        if seeds is not None:
            kw["seeds"] = parse_seeds(seeds)
        cfg = EfficacyConfig(**kw)
        summary = run_efficacy(cfg, out, log=lambda m: typer.echo(f"[efficacy] {m}"))
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise fail(f"bench efficacy: {e}")
    typer.echo(render_markdown(summary))
    typer.echo(f"[efficacy] wrote {out / 'summary.json'} and {out / 'learning_curve.png'}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
