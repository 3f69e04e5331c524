"""The one command per model: cross-validate, train the shipped model, write bundle and card."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from training import evaluate, model_card
from training.common import (
    Case,
    TaskSpec,
    Timer,
    build_bundle,
    cross_validate,
    cross_validate_parallel,
    environment,
    heatmap,
    set_threads,
    train_final,
    write_predictions,
)


def _default_data_dir() -> Path:
    from qamqor.core.settings import Settings

    return Settings().shared_data_dir


def parse_args(spec: TaskSpec, argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m training.{spec.task.value}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the shared data folder (default: QAMQOR_SHARED_DATA_DIR, else ../shared/data)",
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="where bundle and card go")
    parser.add_argument("--version", default="0.1.0", help="the bundle's version (semver)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--seed", type=int, default=spec.config.seed, help="the one seed")
    parser.add_argument(
        "--iterations", type=int, default=None, help="override training steps (smoke tests only)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="CPU threads for torch (1 is faster on a busy machine)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes: folds and the shipped model train side by side (same results)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep each finished fold there, and reuse it when run again (resume)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument(
        "--predictions", type=Path, default=None, help="also write out-of-fold predictions (JSONL)"
    )
    parser.add_argument(
        "--cv-only", action="store_true", help="cross-validate only; no bundle, no card"
    )
    return parser.parse_args(argv)


def main_for(
    spec: TaskSpec,
    load_cases: Callable[[Path], list[Case]],
    argv: Sequence[str] | None,
    *,
    description: str,
    density_keys: Sequence[str],
    notes: str = "",
) -> None:
    from rich.console import Console

    args = parse_args(spec, argv, description)
    set_threads(args.threads)
    config = dataclasses.replace(spec.config, seed=args.seed)
    if args.iterations is not None:
        config = dataclasses.replace(config, iterations=args.iterations)
    spec = dataclasses.replace(spec, config=config)
    console = Console()
    total = Timer()
    data_dir = args.data if args.data is not None else _default_data_dir()

    timer = Timer()
    cases = load_cases(data_dir)
    n_abnormal = sum(c.abnormal for c in cases)
    console.print(
        f"[bold]{spec.name}[/]: {len(cases)} images ({n_abnormal} abnormal, "
        f"{len(cases) - n_abnormal} normal) of {len({c.patient for c in cases})} patients, "
        f"loaded in {timer.seconds():.1f} s"
    )

    timer = Timer()
    model = None
    seconds: dict[str, float] = {}
    if args.jobs > 1 or args.work_dir is not None:
        predictions, model, seconds = cross_validate_parallel(
            cases,
            spec,
            n_folds=args.folds,
            jobs=args.jobs,
            threads=args.threads,
            console=console,
            final=not args.cv_only,
            work_dir=args.work_dir,
        )
    else:
        predictions = cross_validate(cases, spec, n_folds=args.folds, console=console)
    cv_seconds = seconds.get("cross_validation", timer.seconds())
    rep = evaluate.report(
        predictions,
        n_folds=args.folds,
        group_keys=spec.group_keys,
        density_keys=density_keys,
        n_bootstrap=args.bootstrap,
    )
    rep.seconds["cross_validation"] = round(cv_seconds, 1)
    evaluate.print_report(console, f"{spec.name}: {args.folds}-fold cross-validation", rep)
    if args.predictions is not None:
        write_predictions(args.predictions, predictions)
    if args.cv_only:
        console.print(f"cross-validation took {cv_seconds / 60:.1f} min")
        return

    if model is None:
        timer = Timer()
        model = train_final(cases, spec, console=console)
        seconds["final_training"] = round(timer.seconds(), 1)
    rep.seconds["final_training"] = seconds["final_training"]
    path, manifest = build_bundle(
        model, spec, version=args.version, report=rep, predictions=predictions, out_dir=args.out
    )
    _check_export(path, cases[0], model, console)
    elapsed = total.seconds()
    if args.jobs == 1:  # folds kept from an earlier run count with their own times
        elapsed = max(elapsed, cv_seconds + rep.seconds["final_training"])
    rep.seconds["total"] = round(elapsed, 1)
    command = " ".join(
        [".venv/bin/python", "-m", f"training.{spec.task.value}"]
        + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
    )
    card = model_card.render(
        spec=spec,
        manifest=manifest,
        report=rep,
        environment=environment(),
        command=command,
        bundle_bytes=path.stat().st_size,
        extra_notes=notes,
    )
    card_path = path.with_suffix(".md")
    card_path.write_text(card, encoding="utf-8")
    console.print(
        f"[bold green]wrote[/] {path} ({path.stat().st_size / 1e6:.2f} MB) and {card_path}; "
        f"cross-validation {cv_seconds / 60:.1f} min, final model "
        f"{rep.seconds['final_training'] / 60:.1f} min, total {rep.seconds['total'] / 60:.1f} min"
    )


def _check_export(path: Path, case: Case, model: object, console: object) -> None:
    """The ONNX bundle must give the torch model's heat map (same preprocessing, same weights)."""
    from qamqor.ai.inference import Analyser

    analyser = Analyser(path)
    onnx_heat = analyser.heatmap(case.prepared)
    torch_heat = heatmap(model, case)  # type: ignore[arg-type]
    difference = float(np.abs(onnx_heat - torch_heat).max())
    if difference > 1e-3:
        raise SystemExit(f"ONNX export differs from the torch model (max {difference:.2e})")
    console.print(f"ONNX check: heat maps agree (max difference {difference:.1e})")  # type: ignore[attr-defined]
