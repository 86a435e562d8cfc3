"""The ``neurounlearn`` command line: parse, call the library, print.

Every command validates its input first; bad input prints one clear line per problem (file, row,
column, how to fix it) and exits with code 2 — never a traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from neurounlearn.config import (
    ConfoundConfig,
    RunConfig,
    apply_overrides,
    load_config,
    validate_config,
)
from neurounlearn.errors import EXIT_INPUT_ERROR, InputError, Problem
from neurounlearn.formatting import fmt_number
from neurounlearn.results import LeakageResult, leakage_results
from neurounlearn.rundir import (
    COMPARISON_CSV,
    COMPARISON_MD,
    METRICS,
    REPORT,
    SEGMENTATIONS,
    RunFiles,
)

if TYPE_CHECKING:
    from neurounlearn.training.predict import LoadedRun

#: the metavar of an on/off flag: none (typer would print ``<bool>`` beside it)
FLAG = " "

app = typer.Typer(
    help="Train deep models on brain MRI volumes and feature tables while unlearning site, "
    "scanner and other "
    "confounds, and audit how much of them is left.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from neurounlearn.version import __version__

        typer.echo(f"neurounlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="print the version and exit",
        metavar=FLAG,
    ),
) -> None:
    pass  # the options of the program itself; the help is the app's


F = TypeVar("F", bound=Callable[..., Any])


#: The configuration keys that have a flag of their own. The library's hints name the keys (a
#: Python caller has no flags); the CLI shows the flags in their place (:func:`cli_problem`).
CONFIG_FLAGS = {
    "data.path": "--data",
    "confounds.0.name": "--unlearn",
    "confounds.0.subset": "--unlearn-where",
    "erase.0.name": "--erase",
    "data.input": "--input",
    "data.features": "--features",
    "data.target": "--target",
    "data.task": "--task",
    "data.classes": "--classes",
    "data.unlabelled_sites": "--unlabelled-site",
    "model.attach": "--attach",
    "strategy.name": "--strategy",
    "strategy.mode": "--mode",
    "audit.band": "--band",
    "train.seed": "--seed",
    "train.epochs": "--epochs",
    "train.batch_size": "--batch-size",
    "train.lr": "--lr",
}
#: The flags that take a list as comma-separated names: ``data.classes=[bg,CSF]`` is
#: ``--classes bg,CSF`` (a list given to another flag becomes ``--set KEY=[...]``).
COMMA_FLAGS = frozenset({"--classes", "--attach"})
#: a configuration key in a hint (a whole one, not the start of a list entry such as
#: ``data.classes.0``; not one already after ``--set``), and the value it is given
_SETTING = re.compile(
    r"(?<![\w.'\"-])(?<!--set )"  # not a quoted name: "invalid setting 'train.lr'" stays
    r"((?:data|model|strategy|train|audit|erasure|(?:confounds|erase)\.\d+)\.[a-z_]+)(?!\w|\.\w)"
    r"(?:=(\[[^\]]*\]|[^\s,;)]*[^\s,;).]))?"
)


def cli_hint(hint: str) -> str:
    """A library hint in the CLI's words: ``train.seed=0`` -> ``--seed 0``, a key without a flag
    ``model.channels=[8,16]`` -> ``--set model.channels=[8,16]``, and a bare key with a flag
    ``data.target`` -> ``--target (data.target)``, of any list entry (``confounds.1.name`` ->
    ``--unlearn (confounds.1.name)``). A list for a flag that takes comma-separated names loses
    its brackets (``data.classes=[bg,CSF]`` -> ``--classes bg,CSF``); a list for another flag
    stays a ``--set``.

    Examples:
        >>> cli_hint("use model.encoder=mlp with data.input=features, or set data.target")
        'use --set model.encoder=mlp with --input features, or set --target (data.target)'
        >>> cli_hint("e.g. erase.0.kind=categorical, or data.classes=[bg,CSF] with train.seed=0")
        'e.g. --set erase.0.kind=categorical, or --classes bg,CSF with --seed 0'
    """

    def flag(m: re.Match[str]) -> str:
        key, value = m.group(1), m.group(2)
        name = CONFIG_FLAGS.get(key)
        if value is None:  # the flag of the first entry sets every entry of a list
            name = name or CONFIG_FLAGS.get(re.sub(r"\.\d+\.", ".0.", key, count=1))
        if value is not None and name and value.startswith("["):
            if name in COMMA_FLAGS:
                return f"{name} {value[1:-1]}"
            name = None
        if value is not None:
            return f"{name} {value}" if name else f"--set {key}={value}"
        return f"{name} ({key})" if name else key

    return _SETTING.sub(flag, hint)


def say(message: str, *, err: bool = False) -> None:
    """A library's progress message or warning on the terminal, in the CLI's words (on
    standard error with ``err``)."""
    typer.echo(cli_hint(message), err=err)


def cli_problem(problem: Problem) -> Problem:
    """``problem`` with its message and hint in the CLI's words (:func:`cli_hint`).

    Examples:
        >>> str(cli_problem(Problem("data.target names column 'x'", hint="set data.target")))
        "--target (data.target) names column 'x' — set --target (data.target)"
    """
    return dataclasses.replace(
        problem,
        message=cli_hint(problem.message),
        hint=cli_hint(problem.hint) if problem.hint else problem.hint,
    )


def _friendly(fn: F) -> F:
    """Turn InputError into 'error: ...' lines and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            for problem in err.problems:
                typer.echo(f"error: {cli_problem(problem)}", err=True)
            raise typer.Exit(EXIT_INPUT_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except OSError as err:  # a full disk, a read-only folder, a file over the size limit
            typer.echo(f"error: {_os_problem(err)}", err=True)
            raise typer.Exit(EXIT_INPUT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _os_problem(err: OSError) -> str:
    """One line for an operating-system error: the file, what happened and what to do."""
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or str(err) or type(err).__name__
    fixes = {
        errno.ENOSPC: "the disk is full: free space or write to another disk (--out, "
        "data.cache_dir)",
        errno.EDQUOT: "the disk quota is used up: free space or write elsewhere",
        errno.EFBIG: "the file is larger than this system allows: write elsewhere or raise the "
        "file-size limit (ulimit -f)",
        errno.EACCES: "choose a folder you can write to, or fix its permissions",
        errno.EPERM: "choose a folder you can write to, or fix its permissions",
        errno.EROFS: "the file system is read-only: write somewhere else",
    }
    fix = fixes.get(err.errno or -1, "check the path and try again")
    return f"{where}{what} — {fix}"


# -- shared options ------------------------------------------------------------------------------
DataOpt = typer.Option(None, "--data", help="manifest CSV: one row per scan")
FeaturesOpt = typer.Option(None, "--features", help="regex selecting the feature columns")
TargetOpt = typer.Option(None, "--target", help="column to predict (default: age)")
UnlearnOpt = typer.Option(
    None,
    "--unlearn",
    help="confound column to unlearn; repeatable. NAME[:OPTION...] with options categorical "
    "(the default) | continuous (a number: correlation method) | binned (continuous, as "
    "quantile classes) | conditional (keep what the target explains) | key=value for bins, "
    "target_bins, alpha, beta; e.g. --unlearn site --unlearn age:continuous:binned:bins=5 "
    "--unlearn 'site:conditional:target_bins=5'",
)
TaskOpt = typer.Option(
    None,
    "--task",
    help="regression | classification | segmentation (images: --target names the column of "
    "label-map paths; rows left empty serve the unlearning only). Default: inferred, "
    "classification when the target is not numeric or has two values",
)
AttachOpt = typer.Option(
    None,
    "--attach",
    help="segmentation: where the confound heads attach, comma-separated, e.g. "
    "bottleneck,final: bottleneck (the default, deepest encoder features) | final (last "
    "decoder features) | encoder0 ... encoder3 (an encoder level, full resolution down to 1/8; "
    "it reaches the decoder through its skip connection)",
)
ClassesOpt = typer.Option(
    None,
    "--classes",
    help="segmentation: class names by label value, background first, e.g. "
    "background,CSF,GM,WM (default: 0 up to the largest label found)",
)
UnlabelledOpt = typer.Option(
    None,
    "--unlabelled-site",
    help="site whose targets are hidden from training: its rows serve the unlearning only "
    "(e.g. a new scanner); repeatable",
)
EraseOpt = typer.Option(
    None,
    "--erase",
    help="confound column to erase from the trained embedding (LEACE), the task head then "
    "refit on the erased training rows; repeatable. NAME[:conditional|plain]"
    "[:categorical|continuous]: conditional (the default) erases only what the target does "
    "not explain; e.g. --erase site. Inference needs no site column. --set "
    "erasure.when=during also erases inside training (refit every epoch); --set "
    "erasure.variance=0.95 erases within the principal components holding 95% of the "
    "variance (default 1.0: every direction)",
)
WhereOpt = typer.Option(
    None,
    "--unlearn-where",
    help="query restricting which rows enter the unlearning, e.g. '18 <= age <= 35' "
    "(one for all confounds, or one per --unlearn in order)",
)
SeedOpt = typer.Option(None, "--seed", help="seed of the split, initialisation and batches")
EpochsOpt = typer.Option(None, "--epochs", help="maximum epochs")
BatchOpt = typer.Option(None, "--batch-size", help="rows per batch")
LrOpt = typer.Option(None, "--lr", help="learning rate")
ConfigOpt = typer.Option(None, "--config", help="YAML run configuration")
SetOpt = typer.Option(None, "--set", help="override any setting: key=value, e.g. train.patience=30")


#: ``--unlearn NAME:WORD`` words and the confound settings they stand for.
UNLEARN_WORDS: dict[str, dict[str, Any]] = {
    "categorical": {"kind": "categorical"},
    "continuous": {"kind": "continuous"},
    "correlation": {"kind": "continuous", "method": "correlation"},
    "binned": {"kind": "continuous", "method": "binned"},
    "conditional": {"conditional": True},
}
UNLEARN_KEYS = ("bins", "target_bins", "alpha", "beta")


def parse_unlearn_item(item: str, base: ConfoundConfig | None = None) -> dict[str, Any]:
    """``NAME[:OPTION...]`` as confound settings, e.g. ``age:continuous:binned:bins=4``.

    Examples:
        >>> parse_unlearn_item("site:conditional:target_bins=5")
        {'name': 'site', 'conditional': True, 'target_bins': '5'}
    """
    name, *options = item.split(":")
    if not name:
        raise InputError(f"--unlearn {item}: no column name", hint="e.g. --unlearn site")
    settings: dict[str, Any] = base.model_dump(mode="json") if base else {}
    settings["name"] = name
    hint = (
        f"options are {', '.join(UNLEARN_WORDS)} or KEY=VALUE with KEY one of "
        f"{', '.join(UNLEARN_KEYS)}, e.g. --unlearn age:continuous:binned:bins=5"
    )
    for option in options:
        key, eq, value = option.partition("=")
        if eq:
            if key not in UNLEARN_KEYS:
                raise InputError(f"--unlearn {item}: unknown setting '{key}'", hint=hint)
            settings[key] = value
        elif option in UNLEARN_WORDS:
            settings |= UNLEARN_WORDS[option]
        else:
            raise InputError(f"--unlearn {item}: unknown option '{option}'", hint=hint)
    return settings


ERASE_WORDS = ("conditional", "plain", "categorical", "continuous")


def parse_erase_item(item: str) -> dict[str, Any]:
    """``NAME[:conditional|plain][:categorical|continuous]`` as erasure settings.

    Examples:
        >>> parse_erase_item("site:plain")
        {'name': 'site', 'mode': 'plain'}
    """
    name, *options = item.split(":")
    if not name:
        raise InputError(f"--erase {item}: no column name", hint="e.g. --erase site")
    settings: dict[str, Any] = {"name": name}
    for option in options:
        if option in ("conditional", "plain"):
            settings["mode"] = option
        elif option in ("categorical", "continuous"):
            settings["kind"] = option
        else:
            raise InputError(
                f"--erase {item}: unknown option '{option}'",
                hint=f"options are {', '.join(ERASE_WORDS)}, e.g. --erase site:conditional",
            )
    return settings


def _parse_unlearn(
    items: list[str], wheres: list[str], base: list[ConfoundConfig]
) -> list[dict[str, Any]]:
    if wheres and len(wheres) not in (1, len(items)):
        raise InputError(
            f"{len(wheres)} --unlearn-where for {len(items)} --unlearn",
            hint="give one --unlearn-where for all confounds, or one per --unlearn",
        )
    from neurounlearn.query import check as check_query

    for text in wheres:
        try:
            check_query(text)
        except InputError as err:  # name the flag the query came from
            p = err.problem
            raise InputError(p.message, file="--unlearn-where", hint=p.hint) from None
    known = {c.name: c for c in base}
    out = []
    for i, item in enumerate(items):
        settings = parse_unlearn_item(item, known.get(item.split(":")[0]))
        if wheres:
            settings["subset"] = wheres[0] if len(wheres) == 1 else wheres[i]
        out.append(settings)
    return out


def build_config(
    *,
    config: Path | None,
    data: Path | None = None,
    input: str | None = None,
    features: str | None = None,
    target: str | None = None,
    task: str | None = None,
    unlabelled_sites: list[str] | None = None,
    unlearn: list[str] | None = None,
    where: list[str] | None = None,
    erase: list[str] | None = None,
    strategy: str | None = None,
    mode: str | None = None,
    band: tuple[float, float] | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    overrides: list[str] | None = None,
    attach: str | None = None,
    classes: str | None = None,
) -> RunConfig:
    """Defaults, then the config file, then flags, then ``--set``."""
    cfg = load_config(config) if config else RunConfig()
    raw = cfg.model_dump(mode="json")
    if data is not None:
        raw["data"]["path"] = str(data)
    for key, value in (
        ("input", input),
        ("features", features),
        ("target", target),
        ("task", task),
    ):
        if value is not None:
            raw["data"][key] = value
    if unlabelled_sites:
        raw["data"]["unlabelled_sites"] = list(unlabelled_sites)
    if classes is not None:
        raw["data"]["classes"] = list(_names(classes))
    if attach is not None:
        raw["model"]["attach"] = list(_names(attach))
    if unlearn:
        raw["confounds"] = _parse_unlearn(unlearn, where or [], cfg.confounds)
    elif where:
        raise InputError(
            "--unlearn-where needs --unlearn",
            hint="e.g. --unlearn site --unlearn-where '18 <= age <= 35'",
        )
    if erase:
        raw["erase"] = [parse_erase_item(item) for item in erase]
    if strategy is not None:
        raw["strategy"]["name"] = strategy
    if mode is not None:
        raw["strategy"]["mode"] = mode
    if band is not None:
        raw["audit"]["band"] = list(band)
    train_flags: dict[str, int | float | None] = {
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
    }
    raw["train"] |= {k: v for k, v in train_flags.items() if v is not None}
    cfg = validate_config(raw, "command line")
    return apply_overrides(cfg, overrides, source="--set") if overrides else cfg


#: A command's parameter and :func:`build_config`'s keyword, where their names differ.
CONFIG_PARAMETERS = {
    "unlabelled_site": "unlabelled_sites",
    "unlearn_where": "where",
    "set_": "overrides",
}


def config_from_options(options: dict[str, Any]) -> RunConfig:
    """:func:`build_config` from a command's options (``fit``, ``compare`` and ``check`` pass
    their ``locals()``): each option that names a :func:`build_config` keyword, directly or
    through :data:`CONFIG_PARAMETERS`; the command's other options (``--out``, ``--folds``, ...)
    are left out, and the keywords a command has no flag for keep their defaults."""
    keywords = inspect.signature(build_config).parameters
    given = {CONFIG_PARAMETERS.get(name, name): value for name, value in options.items()}
    return build_config(**{k: v for k, v in given.items() if k in keywords})


def _leak(audit: LeakageResult, probe: str, conditional: bool = False) -> str:
    if conditional:
        audit = audit.conditional or LeakageResult.from_dict(None)
    return fmt_number(audit.figure(probe))


def _task_line(task: dict[str, Any], what: str = "test") -> str:
    if task.get("kind") == "segmentation":
        per_class = ", ".join(f"{k} {fmt_number(v)}" for k, v in task["dice"].items())
        sites = ", ".join(
            f"{k} {fmt_number(v['mean_dice'])} (n={v['n']})"
            for k, v in task.get("per_site", {}).items()
        )
        return (
            f"{what} Dice {per_class} (mean {fmt_number(task.get('mean_dice'))}, n={task['n']} "
            f"labelled); mean Dice per site: {sites or '—'}"
        )
    if task.get("kind") == "classification":
        return (
            f"{what} balanced accuracy {fmt_number(task.get('balanced_accuracy'))} "
            f"(chance {fmt_number(task.get('chance'))}), AUC {fmt_number(task.get('auc'))} "
            f"(n={task['n']})"
        )
    return (
        f"{what} MAE {fmt_number(task.get('mae'))} (n={task['n']}), "
        f"r={fmt_number(task.get('pearson_r'))}"
    )


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    lines = [_task_line(metrics["task"])]
    unlabelled = metrics.get("unlabelled_sites") or {}
    if unlabelled.get("test"):
        sites = ", ".join(unlabelled["sites"])
        lines.append(_task_line(unlabelled["test"], f"unlabelled site(s) {sites}: test"))
        lines.append(_task_line(unlabelled["all_rows"], f"unlabelled site(s) {sites}: all rows"))
    for name, audit in leakage_results(metrics.get("leakage")).items():
        chance = audit.chance
        metric = "R²" if audit.kind == "continuous" else "balanced accuracy"
        parts = [
            f"{name} leakage: linear {_leak(audit, 'linear')}, "
            f"nonlinear {_leak(audit, 'nonlinear')} {metric}"
            + (f" (chance {chance:.2f})" if chance else "")
        ]
        band = audit.conditional.band if audit.conditional else []
        if band:
            parts.append(
                f"in band {band}: linear {_leak(audit, 'linear', True)}, "
                f"nonlinear {_leak(audit, 'nonlinear', True)}"
            )
        lines.append("; ".join(parts))
    return lines


# -- commands ------------------------------------------------------------------------------------
@app.command()
@_friendly
def fit(
    out: Path = typer.Option(..., "--out", help="run directory to create"),
    data: Path | None = DataOpt,
    input: str | None = typer.Option(
        None,
        "--input",
        help="features (a feature table, the default) | image (one NIfTI volume per row, path "
        "in the 'image' column)",
    ),
    features: str | None = FeaturesOpt,
    target: str | None = TargetOpt,
    task: str | None = TaskOpt,
    unlearn: list[str] | None = UnlearnOpt,
    unlearn_where: list[str] | None = WhereOpt,
    erase: list[str] | None = EraseOpt,
    unlabelled_site: list[str] | None = UnlabelledOpt,
    strategy: str | None = typer.Option(
        None, "--strategy", help="baseline | iterative | grl (default: iterative)"
    ),
    mode: str | None = typer.Option(
        None,
        "--mode",
        help="iterative: sequential (the paper's three steps, the default) | joint (one encoder "
        "pass per batch)",
    ),
    band: tuple[float, float] | None = typer.Option(
        None, "--band", help="audit also within this target band, e.g. --band 18 35"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue the interrupted run in --out", metavar=FLAG
    ),
    attach: str | None = AttachOpt,
    classes: str | None = ClassesOpt,
    seed: int | None = SeedOpt,
    epochs: int | None = EpochsOpt,
    batch_size: int | None = BatchOpt,
    lr: float | None = LrOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Train a model that predicts --target while unlearning each --unlearn confound."""
    from neurounlearn.evaluation.evaluate import evaluate
    from neurounlearn.training.distributed import is_follower
    from neurounlearn.training.fit import fit as run_fit

    if resume and config is None and RunFiles(out).config.is_file():
        config = RunFiles(out).config  # resume what was started; flags given still override
    cfg = config_from_options(locals())
    run_dir = run_fit(cfg, out, resume=resume, echo=say)
    if is_follower():  # one of several training processes: the first evaluates and reports
        return
    metrics = evaluate(run_dir)
    typer.echo(f"run written to {run_dir}")
    for line in summary_lines(metrics):
        typer.echo("  " + line)


@app.command("evaluate")
@_friendly
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    data: Path | None = typer.Option(
        None, "--data", help="external test manifest (default: the run's test split)"
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="CSV of subject ids and true targets for the run's unlabelled sites "
        "(--unlabelled-site): evaluates the model there too",
    ),
) -> None:
    """Task metrics and the leakage audit of a run; writes RUN_DIR/metrics.json."""
    from neurounlearn.evaluation.evaluate import evaluate

    metrics = evaluate(run_dir, data=data, labels=labels)
    typer.echo(f"metrics written to {RunFiles(Path(run_dir)).metrics}")
    for line in summary_lines(metrics):
        typer.echo("  " + line)


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


@app.command()
@_friendly
def compare(
    out: Path = typer.Option(..., "--out", help="directory to create for the comparison"),
    arms: str = typer.Option(
        "raw,combat,baseline,baseline+combat,iterative,grl",
        "--arms",
        help="comma-separated arms: raw (linear readout of the raw features) | combat | "
        "combat-inference (ComBat on the raw features; -inference: test subjects harmonised "
        "without the target covariate, as at inference) | baseline | iterative | "
        "iterative-joint | grl (networks) | baseline+combat | baseline+combat-inference "
        "(ComBat on the baseline's embeddings) | raw+erase | baseline+erase | iterative+erase "
        "| grl+erase (LEACE of the --erase confounds, default site, conditional; a network's "
        "task head refit on the erased training rows; with --set erasure.when=during a fit of "
        "its own that erases inside training)",
    ),
    folds: int = typer.Option(
        5,
        "--folds",
        help="K-fold cross-fitting: every subject is predicted by a model that "
        "never trained on it; at most the subject count of the smallest site",
    ),
    external: str | None = typer.Option(
        None,
        "--external",
        help="leave-one-site-out: also hold out each site in turn and report every arm's "
        "error on it (a scanner never seen in training)",
    ),
    combat_covariates: str | None = typer.Option(
        None,
        "--combat-covariates",
        help="columns ComBat preserves, comma-separated (categories are one-hot coded); "
        "default: the target. 'none' for no covariates",
    ),
    combat_smooth: str | None = typer.Option(
        None,
        "--combat-smooth",
        help="covariates ComBat-GAM models as smooth terms, e.g. age (must be covariates)",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        help="fits run in parallel (default: one per CPU core for feature tables, each on "
        "one thread; images: 1)",
    ),
    data: Path | None = DataOpt,
    input: str | None = typer.Option(
        None, "--input", help="features (a feature table, the default) | image"
    ),
    features: str | None = FeaturesOpt,
    target: str | None = TargetOpt,
    task: str | None = TaskOpt,
    unlearn: list[str] | None = UnlearnOpt,
    unlearn_where: list[str] | None = WhereOpt,
    erase: list[str] | None = EraseOpt,
    unlabelled_site: list[str] | None = UnlabelledOpt,
    band: tuple[float, float] | None = typer.Option(
        None, "--band", help="audit also within this target band, e.g. --band 18 35"
    ),
    seed: int | None = SeedOpt,
    epochs: int | None = EpochsOpt,
    batch_size: int | None = BatchOpt,
    lr: float | None = LrOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Run every arm (ComBat, baseline, unlearning strategies) on the same seeded folds and
    write comparison.csv, comparison.md and report.html."""
    from neurounlearn.evaluation.compare import CombatSettings
    from neurounlearn.evaluation.compare import compare as run_compare
    from neurounlearn.reporting.compare import render_comparison

    cfg = config_from_options(locals())
    covariates = _names(combat_covariates) if combat_covariates else (cfg.data.target,)
    if combat_covariates and combat_covariates.strip().lower() == "none":
        covariates = ()
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs must be 1 or more, got {jobs}", hint="e.g. --jobs 2")
    run_compare(
        cfg,
        out,
        arms=arms.split(","),
        folds=folds,
        external=external,
        combat=CombatSettings(covariates=covariates, smooth_terms=_names(combat_smooth)),
        jobs=jobs,
        echo=say,
    )
    typer.echo("writing the report ...")
    render_comparison(out)
    typer.echo(f"\n{(out / COMPARISON_MD).read_text()}")
    typer.echo(f"comparison written to {out}: {COMPARISON_CSV}, {COMPARISON_MD}, {REPORT}")


@app.command()
@_friendly
def report(
    run_dirs: list[Path] = typer.Argument(..., help="finished run directories"),
    out: Path = typer.Option(Path(REPORT), "--out", help="HTML file to write (figures embedded)"),
    title: str | None = typer.Option(None, "--title", help="the report's title"),
) -> None:
    """Render finished runs into one standalone HTML report: curves, predictions, per-site
    errors, embeddings, leakage, a comparison table and warnings. A run without metrics.json
    is evaluated first (which writes it)."""
    from neurounlearn.reporting.runs import render_runs

    def evaluate_first(run_dir: Path) -> None:
        from neurounlearn.evaluation.evaluate import evaluate

        typer.echo(f"evaluating {run_dir} (no {METRICS} yet) ...")
        evaluate(run_dir)

    path = render_runs(list(run_dirs), out, title=title, on_missing_metrics=evaluate_first)
    typer.echo(f"report written to {path}")


#: ``--out -``: the table goes to standard output (and the messages to standard error)
STDOUT = "-"


def _apply(run: LoadedRun, data: Path, out: Path, which: int) -> int:
    from neurounlearn.atomic import check_out, check_table_path, write_table
    from neurounlearn.training.predict import predict_file

    to_stdout = str(out) == STDOUT
    if not to_stdout:
        check_out(out, folder=False, flag="--out")
        check_table_path(out)
    frame = predict_file(run, data, echo=functools.partial(say, err=to_stdout))[which]
    if to_stdout:
        frame.to_csv(sys.stdout, index=False)
        return len(frame)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(frame, out)
    return len(frame)


def _written(n: int, what: str, out: Path) -> None:
    """The closing line; on standard error when the table itself went to standard output."""
    to_stdout = str(out) == STDOUT
    typer.echo(f"{n} {what} written to {'standard output' if to_stdout else out}", err=to_stdout)


@app.command()
@_friendly
def predict(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    data: Path = typer.Option(..., "--data", help="manifest of new data (no site column needed)"),
    out: Path = typer.Option(
        ...,
        "--out",
        help="table to write: .csv, .tsv, .parquet (needs pyarrow), or - for standard "
        "output; for a segmentation run, a folder: one label map per subject (ID_seg.nii.gz, "
        "on the input's grid with its affine) and segmentations.csv",
    ),
) -> None:
    """Predict the target for new data with a finished run (segmentation: label maps)."""
    from neurounlearn.training.predict import load_run

    run = load_run(run_dir)
    if run.encoding.task == "segmentation":
        from neurounlearn.atomic import check_out, write_csv
        from neurounlearn.training.predict import segment_images

        check_out(out, folder=True, flag="--out")
        frame, _ = segment_images(run, data, out_dir=out, echo=say)
        write_csv(frame, out / SEGMENTATIONS)
        typer.echo(f"{len(frame)} label maps written to {out} (list: {out / SEGMENTATIONS})")
        return
    n = _apply(run, data, out, 0)
    _written(n, "predictions", out)


@app.command()
@_friendly
def embed(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    data: Path = typer.Option(
        ..., "--data", help="manifest of data to embed (no site column needed)"
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="table to write: .csv, .tsv, .parquet (needs pyarrow), or - for standard output",
    ),
) -> None:
    """Write the harmonised embeddings (encoder features) of new data; for a segmentation run,
    each attach point's pooled feature map (POINT_e0, ...: channel means, then standard
    deviations)."""
    from neurounlearn.training.predict import load_run

    n = _apply(load_run(run_dir), data, out, 1)
    _written(n, "embeddings", out)


@app.command()
@_friendly
def check(
    data: Path = typer.Option(..., "--data", help="manifest CSV to check"),
    input: str | None = typer.Option(
        None, "--input", help="features (default) | image: also open and check every volume"
    ),
    features: str | None = FeaturesOpt,
    target: str | None = TargetOpt,
    task: str | None = TaskOpt,
    unlearn: list[str] | None = UnlearnOpt,
    unlearn_where: list[str] | None = WhereOpt,
    unlabelled_site: list[str] | None = UnlabelledOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Check a manifest and print every problem found, with its row and column."""
    cfg = config_from_options(locals())
    from neurounlearn.checks import check_manifest

    found = check_manifest(cfg, data)
    for p in found.problems:
        typer.echo(f"{p.severity}: {cli_problem(p)}", err=True)
    if found.errors:
        typer.echo(f"{len(found.errors)} error(s): fix them before training", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR)
    warned = f", {len(found.problems)} warning(s)" if found.problems else ""
    typer.echo(f"ok: {found.summary()}, no errors{warned}")


def _parse_ages(text: str) -> str | list[tuple[float, float]]:
    """``paper``, ``independent``, or per-site ranges ``45-80,20-60,60-85``."""
    if "-" not in text:
        return text
    ranges = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            ranges.append((float(low), float(high)))
        except ValueError:
            raise InputError(
                f"--ages: cannot read the range '{part.strip()}'",
                hint="give a preset (paper, independent) or one LOW-HIGH range per site, "
                "e.g. --ages 45-80,20-60,60-85",
            ) from None
    return ranges


@app.command()
@_friendly
def simulate(
    out: Path = typer.Argument(..., help="folder to write the cohort into"),
    sites: int | None = typer.Option(
        None, "--sites", help="number of sites (scanners); default 3, or the preset's"
    ),
    subjects: int = typer.Option(300, "--subjects", help="subjects in all, spread over the sites"),
    shape: int = typer.Option(48, "--shape", help="side of the cubic volumes, in voxels"),
    seed: int = typer.Option(0, "--seed", help="seed of every subject and scanner parameter"),
    ages: str | None = typer.Option(
        None,
        "--ages",
        help="per-site age ranges: paper (partly overlapping, like UK Biobank / OASIS / "
        "Whitehall II; the default without --preset) | independent (one range for all sites) | "
        "LOW-HIGH per site, e.g. 45-80,20-60,60-85",
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="images: fixed scanners instead of evenly spread ones. segmentation: two sites "
        "whose contrast and bias field differ strongly, ages independent of site (the paper's "
        "segmentation setting)",
    ),
    scanner_strength: float = typer.Option(
        1.0, "--scanner-strength", help="scale of the scanner effects; 0: identical scanners"
    ),
    age_effect: float = typer.Option(
        1.0, "--age-effect", help="scale of the age effect on anatomy (atrophy, ventricles)"
    ),
    table: bool = typer.Option(
        False,
        "--table",
        help="write a feature table of regional volumes (FreeSurfer-like; features regex "
        "'^region_') instead of images: fast unlearning experiments on a CPU",
        metavar=FLAG,
    ),
    features: int = typer.Option(60, "--features", help="--table: number of regions"),
    sex_ratio: str = typer.Option(
        "0.5",
        "--sex-ratio",
        help="--table: fraction of males, one for all sites or one per site (e.g. 0.3,0.7)",
    ),
) -> None:
    """Write a simulated multi-site cohort: MRI volumes with tissue labels (the default), or
    with --table a table of regional volumes; manifest.csv and generation.json either way."""
    if table:
        from neurounlearn.data.simulate_table import simulate_table

        try:
            ratios = [float(v) for v in sex_ratio.split(",")]
        except ValueError:
            raise InputError(
                f"--sex-ratio: cannot read '{sex_ratio}'",
                hint="give one fraction for all sites or one per site, e.g. 0.5 or 0.3,0.7",
            ) from None
        if preset is not None:
            raise InputError("--preset applies to images, not to --table")
        sites = 3 if sites is None else sites
        simulate_table(
            out,
            sites=sites,
            subjects=subjects,
            features=features,
            seed=seed,
            ages=_parse_ages(ages or "paper"),
            sex_ratio=ratios[0] if len(ratios) == 1 else ratios,
            site_strength=scanner_strength,
            age_effect=age_effect,
        )
        typer.echo(
            f"{subjects} subjects at {sites} sites written; manifest: {out / 'manifest.csv'}"
        )
        typer.echo(
            f"features: --features '^region_'; generating parameters: {out / 'generation.json'}"
        )
        return
    from neurounlearn.data.simulate import simulate_cohort

    manifest = simulate_cohort(
        out,
        sites=sites,
        subjects=subjects,
        shape=shape,
        seed=seed,
        ages=None if ages is None else _parse_ages(ages),
        scanner_strength=scanner_strength,
        age_effect=age_effect,
        preset=preset,
    )
    n_sites = json.loads((manifest.parent / "generation.json").read_text())["sites"]
    typer.echo(f"{subjects} subjects at {n_sites} sites written; manifest: {manifest}")
    typer.echo(f"generating parameters: {manifest.parent / 'generation.json'}")
    typer.echo(f"one mid-slice per site: {manifest.parent / 'sites.png'}")


@app.command()
@_friendly
def bundled(
    out: Path = typer.Argument(
        Path("openneuro_transfer.csv"), help="CSV to write (or a folder to write it into)"
    ),
) -> None:
    """Write the bundled real table (OpenNeuroTransfer: 546 scans, 6 OpenNeuro sites, 245
    FreeSurfer measures, CC0) as a manifest, and print the flags to use it."""
    from neurounlearn.data.bundled import OPENNEURO_FEATURES, write_openneuro_transfer

    path = write_openneuro_transfer(out)
    typer.echo(f"546 scans at 6 sites written to {path} (provenance: neurounlearn.data.bundled)")
    typer.echo(f"use it with: --data {path} --features '{OPENNEURO_FEATURES}' --target age")


@app.command()
@_friendly
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="directory for the demo runs"),
    epochs: int | None = typer.Option(
        None, "--epochs", help="epochs per model (default: the demo's)"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the split and the models"),
    images: bool = typer.Option(
        True,
        "--images/--no-images",
        help="also run the image part on a simulated cohort",
        metavar=FLAG,
    ),
) -> None:
    """Baseline, iterative and gradient-reversal models on the bundled OpenNeuroTransfer table,
    then on a simulated multi-site MRI cohort."""
    from neurounlearn.demo import run_all

    run_all(out, epochs=epochs, seed=seed, images=images, echo=typer.echo)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
