"""Robustness of the command line: bad input and faults, each run through ``neurounlearn``.

Every case runs the CLI in its own subprocess and checks the promise for bad input: exit code 2,
a clear error (every non-empty stderr line that is not a progress/info line starts with
``error:`` or ``warning:``, at least one ``error:`` line), no Python traceback, and nothing
half-written (per case: an output path that must not exist afterwards, files or folders that
must be byte-identical to before, the marker file a security payload would create). A few cases
expect success instead: a warning (exit 0 and a ``warning:`` line), a stale temporary file
cleaned, and a run killed with SIGKILL and resumed giving the bytes of an uninterrupted one.

Fixtures (a finished table run, one with an unlabelled site, a tiny simulated image cohort and a
finished image run) are built once in a temporary folder; every fault case damages a copy.
Writes ``benchmarks/results/robustness.{json,md}``. Exit code 0 even when cases are not handled:
it is a measurement.

    python benchmarks/robustness.py [--keep] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.formatting import markdown_table

RESULTS = Path(__file__).parent / "results"
FEATURES = [f"f{i}" for i in range(6)]
FEATURE_REGEX = r"^f\d$"
#: Settings that keep every table fit to a few seconds.
FAST = [
    "--set",
    "strategy.pretrain_epochs=1",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.progress_bar=false",
    "--set",
    "audit.n_permutations=0",
    "--set",
    "audit.n_permutations_nonlinear=0",
    "--set",
    "audit.n_bootstrap=0",
]
AUDIT_FAST = FAST[6:]
#: A path that cannot be created, even by root.
UNWRITABLE_RUN = "/sys/neurounlearn-robustness-run"
UNWRITABLE_CACHE = "/sys/neurounlearn-robustness-cache"
#: The most seconds one CLI call may take before the case counts as not handled.
CALL_TIMEOUT_S = 600
FIRST_LINE_CHARS = 110

#: stderr lines that are progress or information, not problems.
PROGRESS = re.compile(r"\d+%\||it/s|s/it|subject/s|━|\d+/\d+ \d+:\d\d:\d\d")
INFO = re.compile(
    r"^(\d+ error\(s\): fix them before training$|task: |caching |cached |reusing image cache |"
    r"cache |removed )"
)


def _test_fixtures() -> Any:
    """``tests/conftest.py`` of this checkout: the synthetic manifest the test suite uses."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("neurounlearn_test_fixtures", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_manifest(sites: int = 3, per_site: int = 40, seed: int = 0) -> pd.DataFrame:
    """``per_site`` subjects at each of ``sites`` sites: subject, site, age, sex, f0..f5 (the
    test suite's manifest, larger)."""
    frame: pd.DataFrame = _test_fixtures().make_manifest(sites, per_site, seed)
    return frame


class _Payload:
    """Unpickling this runs ``command`` in a shell: the malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class HarnessError(RuntimeError):
    """The benchmark itself went wrong (a fixture failed, a path existed before a case)."""


# -- guards: what must hold after a case ----------------------------------------------------------
class Guard:
    def before(self) -> None:
        """Called after the case's setup, right before the command runs."""

    def after(self) -> str | None:
        """``None`` when the guard holds, else why not."""
        return None


def _digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 for a file, or for every file and folder below a folder."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@dataclass
class Absent(Guard):
    """``path`` must not exist afterwards (and must not exist before)."""

    path: Path
    what: str = ""

    def before(self) -> None:
        if os.path.lexists(self.path):
            raise HarnessError(f"{self.path} exists before the case")

    def after(self) -> str | None:
        if os.path.lexists(self.path):
            return f"{self.what or self.path.name} exists afterwards"
        return None


@dataclass
class Unchanged(Guard):
    """``path`` (a file, or every file below a folder) must be byte-identical afterwards."""

    path: Path
    snapshot: dict[str, str] = field(default_factory=dict)

    def before(self) -> None:
        if not self.path.exists():
            raise HarnessError(f"{self.path} does not exist before the case")
        self.snapshot = _digest(self.path)

    def after(self) -> str | None:
        now = _digest(self.path)
        if not self.path.exists():
            return f"{self.path.name} was removed"
        changed = sorted(k for k in self.snapshot.keys() & now.keys() if self.snapshot[k] != now[k])
        added = sorted(now.keys() - self.snapshot.keys())
        removed = sorted(self.snapshot.keys() - now.keys())
        if not (changed or added or removed):
            return None
        parts = [
            f"{label} {', '.join(names[:3])}{'...' if len(names) > 3 else ''}"
            for label, names in (("changed", changed), ("added", added), ("removed", removed))
            if names
        ]
        return f"{self.path.name} not byte-identical: " + "; ".join(parts)


@dataclass
class NoLeftovers(Guard):
    """No file matching ``patterns`` in ``folder`` afterwards (a half-built cache)."""

    folder: Path
    patterns: tuple[str, ...] = ("*.npy", "*.tmp")

    def after(self) -> str | None:
        if not self.folder.is_dir():
            return None
        left = sorted({p.name for pat in self.patterns for p in self.folder.glob(pat)})
        return f"left in {self.folder.name}: {', '.join(left[:3])}" if left else None


@dataclass
class Removed(Guard):
    """``path`` exists before (the setup made it) and must be gone afterwards."""

    path: Path

    def before(self) -> None:
        if not self.path.exists():
            raise HarnessError(f"{self.path} does not exist before the case")

    def after(self) -> str | None:
        return f"{self.path.name} is still there" if self.path.exists() else None


# -- cases ----------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    group: str
    argv: list[str]
    #: error | warning | cleaned | identical
    expect: str = "error"
    setup: Callable[[], None] | None = None
    guards: list[Guard] = field(default_factory=list)
    #: RLIMIT_FSIZE in bytes for the command (a "full disk").
    fsize: int | None = None
    #: extra check of (stdout, stderr): ``None`` or why the case is not handled.
    output_check: Callable[[str, str], str | None] | None = None
    #: a custom runner (kill -9 and resume) returning a result dict.
    runner: Callable[[Case], dict[str, Any]] | None = None


def _limit_fsize(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


class Bench:
    """The temporary folder, the fixtures built in it (lazily, once) and the case helpers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cli = str(Path(sys.executable).parent / "neurounlearn")
        if not Path(self.cli).is_file():
            self.cli = shutil.which("neurounlearn") or "neurounlearn"
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "NEUROUNLEARN_CACHE_DIR": str(root / "default-cache"),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        self.manifest = root / "m.csv"
        self.table_run = root / "fixtures" / "table_run"
        self.unlabelled_run = root / "fixtures" / "unlabelled_run"
        self.cohort = root / "fixtures" / "img"
        self.image_manifest = self.cohort / "manifest.csv"
        self.image_run = root / "fixtures" / "image_run"
        self.cache = root / "fixtures" / "cache"
        self.markers = root / "markers"
        self.cases_dir = root / "cases"
        self.outs = root / "out"
        for d in (self.markers, self.cases_dir, self.outs):
            d.mkdir(parents=True, exist_ok=True)
        make_manifest().to_csv(self.manifest, index=False)
        self.tmpfs: Path | None = None
        self.tmpfs_note = "not tried"
        self.fixture_seconds: dict[str, float] = {}

    # -- running the CLI --------------------------------------------------------------------------
    def call(
        self, argv: list[str], *, fsize: int | None = None, timeout: int = CALL_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *argv],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            preexec_fn=_limit_fsize(fsize) if fsize else None,
        )

    def shown(self, argv: list[str]) -> str:
        return shlex.join(["neurounlearn", *argv]).replace(str(self.root), "$TMP")

    def _build(self, label: str, target: Path, argv: list[str]) -> None:
        if target.exists():
            return
        start = time.perf_counter()
        done = self.call(argv)
        if done.returncode != 0 or not target.exists():
            raise HarnessError(
                f"fixture {label} failed (exit {done.returncode}): {self.shown(argv)}\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        self.fixture_seconds[label] = time.perf_counter() - start
        print(f"  fixture {label}: {self.fixture_seconds[label]:.1f} s", flush=True)

    # -- fixtures ---------------------------------------------------------------------------------
    def _table_argv(self, command: str, data: Path | None) -> list[str]:
        data_flags = ["--data", str(data or self.manifest), "--features", FEATURE_REGEX]
        return [command, *data_flags, "--target", "age", "--unlearn", "site"]

    def fit_argv(self, out: Path | str, *extra: str, data: Path | None = None) -> list[str]:
        return [
            *self._table_argv("fit", data),
            "--strategy",
            "iterative",
            "--epochs",
            "4",
            *FAST,
            *extra,
            "--out",
            str(out),
        ]

    def check_argv(self, *extra: str, data: Path | None = None) -> list[str]:
        return [*self._table_argv("check", data), *extra]

    def image_fit_argv(
        self, out: Path | str, *extra: str, cache: Path | str | None = None, epochs: int = 2
    ) -> list[str]:
        return [
            "fit",
            "--data",
            str(self.image_manifest),
            "--input",
            "image",
            "--target",
            "age",
            "--unlearn",
            "site",
            "--epochs",
            str(epochs),
            "--set",
            "data.shape=32",
            "--set",
            "train.batch_size=8",
            "--set",
            f"data.cache_dir={cache or self.cache}",
            "--set",
            "train.progress_bar=false",
            *AUDIT_FAST,
            *extra,
            "--out",
            str(out),
        ]

    def need_table_run(self) -> Path:
        self._build("table run", self.table_run, self.fit_argv(self.table_run))
        return self.table_run

    def need_unlabelled_run(self) -> Path:
        argv = self.fit_argv(self.unlabelled_run, "--unlabelled-site", "site2")
        self._build("unlabelled-site run", self.unlabelled_run, argv)
        return self.unlabelled_run

    def need_cohort(self) -> Path:
        argv = ["simulate", str(self.cohort), "--subjects", "30", "--shape", "32"]
        self._build("image cohort", self.image_manifest, argv)
        return self.cohort

    def need_image_run(self) -> Path:
        self.need_cohort()
        self._build("image run", self.image_run, self.image_fit_argv(self.image_run))
        return self.image_run

    # -- case helpers -----------------------------------------------------------------------------
    def case_dir(self, name: str) -> Path:
        return self.cases_dir / name

    def out(self, name: str) -> Path:
        return self.outs / name

    def marker(self, name: str) -> Path:
        return self.markers / f"{name}.marker"

    def copy_run(self, src: Path, name: str, *, interrupted: bool = False) -> Path:
        """A copy of a fixture run to damage; ``interrupted``: without model.pt and run.json."""
        dest = self.case_dir(name) / "run"
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest)
        if interrupted:
            for leaf in ("model.pt", "run.json", "model.ckpt"):
                (dest / leaf).unlink(missing_ok=True)
        return dest

    def variant(self, name: str, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Path:
        """The table manifest with ``change`` applied, written for case ``name``."""
        frame = make_manifest()
        changed = change(frame)
        frame = frame if changed is None else changed
        path = self.case_dir(name) / "m.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        return path

    def write(self, name: str, leaf: str, content: bytes | str) -> Path:
        path = self.case_dir(name) / leaf
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    def payload(self, name: str) -> str:
        """A pandas-query payload that would create the case's marker file."""
        return f"index == index + @pd.io.common.os.system('touch {self.marker(name)}')"

    def mount_tmpfs(self) -> None:
        if os.geteuid() != 0:
            self.tmpfs_note = "skipped: not root (mount -t tmpfs needs root)"
            return
        mnt = self.root / "tmpfs"
        mnt.mkdir(exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            self.tmpfs_note = f"skipped: mount failed: {(done.stderr or done.stdout).strip()}"
            return
        self.tmpfs = mnt
        self.tmpfs_note = "mounted a 1 MiB tmpfs"

    def unmount_tmpfs(self) -> None:
        if self.tmpfs is not None:
            subprocess.run(["umount", str(self.tmpfs)], capture_output=True)
            self.tmpfs = None


# -- judging one result ---------------------------------------------------------------------------
def _lines(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def first_line(stdout: str, stderr: str, expect: str) -> str:
    err, out = _lines(stderr), _lines(stdout)
    prefer = "warning:" if expect == "warning" else "error:"
    for line in err + out:
        if line.startswith(prefer):
            return line
    for line in err + out:
        if line.startswith(("error:", "warning:")):
            return line
    unclear = [line for line in err if not PROGRESS.search(line) and not INFO.search(line)]
    if unclear:
        return unclear[0]
    return out[-1] if out else ""


def stderr_problems(stderr: str) -> list[str]:
    """stderr lines that are neither error/warning lines nor progress/info lines."""
    return [
        line
        for line in _lines(stderr)
        if not line.startswith(("error:", "warning:"))
        and not PROGRESS.search(line)
        and not INFO.search(line)
    ]


def judge(case: Case, rc: int, stdout: str, stderr: str) -> list[str]:
    """Why the result breaks the case's expectation (empty: handled)."""
    reasons = []
    want = 2 if case.expect == "error" else 0
    if rc != want:
        reasons.append(f"exit code {rc}, expected {want}")
    if "Traceback" in stdout or "Traceback" in stderr:
        reasons.append("a Python traceback was printed")
    unclear = stderr_problems(stderr)
    if unclear:
        reasons.append(f"unclear stderr line: {unclear[0][:80]!r}")
    if case.expect == "error" and not any(line.startswith("error:") for line in _lines(stderr)):
        reasons.append("no 'error:' line on stderr")
    if case.expect == "warning" and not any(
        line.startswith("warning:") for line in _lines(stdout) + _lines(stderr)
    ):
        reasons.append("no 'warning:' line")
    if case.output_check is not None:
        extra = case.output_check(stdout, stderr)
        if extra:
            reasons.append(extra)
    for guard in case.guards:
        broken = guard.after()
        if broken:
            reasons.append(broken)
    return reasons


def run_case(bench: Bench, case: Case) -> dict[str, Any]:
    start = time.perf_counter()
    record: dict[str, Any] = {
        "name": case.name,
        "group": case.group,
        "expect": case.expect,
        "command": bench.shown(case.argv),
    }
    try:
        if case.setup is not None:
            case.setup()
        if case.runner is not None:
            record.update(case.runner(case))
        else:
            for guard in case.guards:
                guard.before()
            done = bench.call(case.argv, fsize=case.fsize)
            reasons = judge(case, done.returncode, done.stdout, done.stderr)
            record.update(
                rc=done.returncode,
                handled=not reasons,
                first_line=first_line(done.stdout, done.stderr, case.expect),
                stderr_tail=done.stderr[-1500:] if reasons else "",
            )
            if reasons:
                record["reason"] = "; ".join(reasons)
    except subprocess.TimeoutExpired:
        record.update(rc=None, handled=False, first_line="", reason="timed out")
    except HarnessError as err:
        record.update(rc=None, handled=False, first_line="", reason=f"harness: {err}")
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


# -- kill -9 and resume ---------------------------------------------------------------------------
COMPARED = ("predictions.csv", "embeddings.csv", "history.csv")


def _checkpoint_epoch(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # being written or replaced: try again
        return None


def kill_and_resume(bench: Bench, argv_for: Callable[[Path], list[str]], kill_at: int):
    """A runner: an uninterrupted run, then the same run SIGKILLed at a checkpoint of epoch
    ``kill_at`` and resumed; their outputs must be byte-identical."""

    def runner(case: Case) -> dict[str, Any]:
        work = bench.case_dir(case.name)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        ref, killed = work / "uninterrupted", work / "killed"
        resume_argv = [*argv_for(killed), "--resume"]
        base = {"command": bench.shown(resume_argv)}
        done = bench.call(argv_for(ref))
        if done.returncode != 0:
            return {
                **base,
                "rc": done.returncode,
                "handled": False,
                "first_line": first_line(done.stdout, done.stderr, "error"),
                "reason": f"harness: the uninterrupted run failed (exit {done.returncode})",
            }
        ckpt = killed / "checkpoints" / "last.ckpt"
        proc = subprocess.Popen(
            [bench.cli, *argv_for(killed)],
            cwd=bench.root,
            env=bench.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen: tuple[int, int] | None = None
        epoch_killed = None
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                st = ckpt.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp is not None and stamp != seen:
                seen = stamp
                epoch = _checkpoint_epoch(ckpt)
                if epoch is not None and epoch >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    epoch_killed = epoch
                    break
            time.sleep(0.002)
        proc.wait()
        if epoch_killed is None:
            return {
                **base,
                "rc": None,
                "handled": False,
                "first_line": "",
                "reason": f"harness: the run ended (exit {proc.returncode}) before a checkpoint "
                f"of epoch >= {kill_at} was seen; nothing was killed",
            }
        done = bench.call(resume_argv)
        reasons = []
        if done.returncode != 0:
            reasons.append(f"resume exit code {done.returncode}, expected 0")
        if "Traceback" in done.stdout or "Traceback" in done.stderr:
            reasons.append("a Python traceback was printed")
        unclear = stderr_problems(done.stderr)
        if unclear:
            reasons.append(f"unclear stderr line: {unclear[0][:80]!r}")
        for leaf in COMPARED:
            a, b = ref / leaf, killed / leaf
            if not b.is_file():
                reasons.append(f"{leaf} missing after the resume")
            elif a.read_bytes() != b.read_bytes():
                reasons.append(f"{leaf} differs from the uninterrupted run")
        line = first_line(done.stdout, done.stderr, "error")
        if not reasons:
            line = f"killed at epoch {epoch_killed}; {', '.join(COMPARED)} byte-identical"
        out = {
            **base,
            "rc": done.returncode,
            "handled": not reasons,
            "first_line": line,
            "killed_at_epoch": epoch_killed,
        }
        if reasons:
            out["reason"] = "; ".join(reasons)
            out["stderr_tail"] = done.stderr[-1500:]
        return out

    return runner


# -- the case list --------------------------------------------------------------------------------
def build_cases(b: Bench) -> list[Case]:
    cases: list[Case] = []

    def add(case: Case) -> None:
        cases.append(case)

    # -- security: queries and pickles must never run code -------------------------------------
    def where_case(name: str, query: str, *, marker: bool = False) -> None:
        guards: list[Guard] = [Absent(b.marker(name), "marker file")] if marker else []
        add(Case(name, "security", b.check_argv("--unlearn-where", query), guards=guards))

    m = b.marker
    where_case("where-at-pd-os-system", b.payload("where-at-pd-os-system"), marker=True)
    where_case(
        "where-dunder-import",
        f"__import__('os').system('touch {m('where-dunder-import')}')",
        marker=True,
    )
    where_case("where-dunder-class", "age.__class__")
    where_case("where-method-call", "age > 0 and site.str.len() > 0")
    where_case("where-comprehension", "[x for x in age]")
    where_case("where-lambda", "lambda: 1")
    where_case("where-over-2000-chars", "age > 0" + " or age > 0" * 200)
    where_case("where-subscript", "age[0] > 1")
    where_case(
        "where-getattr-builtins",
        "@pd.__builtins__['exec']("
        f"\"import os; os.system('touch {m('where-getattr-builtins')}')\")",
        marker=True,
    )
    name = "fit-where-dunder-import"
    add(
        Case(
            name,
            "security",
            b.fit_argv(
                b.out(name), "--unlearn-where", f"__import__('os').system('touch {m(name)}')"
            ),
            guards=[Absent(m(name), "marker file"), Absent(b.out(name), "--out")],
        )
    )
    name = "set-subset-payload"
    add(
        Case(
            name,
            "security",
            b.fit_argv(b.out(name), "--set", f"confounds.0.subset={b.payload(name)}"),
            guards=[Absent(m(name), "marker file"), Absent(b.out(name), "--out")],
        )
    )
    name = "config-yaml-subset-payload"
    cfg = b.case_dir(name) / "cfg.yaml"
    add(
        Case(
            name,
            "security",
            [
                "fit",
                "--data",
                str(b.manifest),
                "--features",
                FEATURE_REGEX,
                "--target",
                "age",
                "--config",
                str(cfg),
                *FAST,
                "--out",
                str(b.out(name)),
            ],
            setup=lambda cfg=cfg, name=name: (
                b.write(
                    name,
                    cfg.name,
                    "confounds: [{name: site, subset: " + json.dumps(b.payload(name)) + "}]\n",
                )
                and None
            ),
            guards=[Absent(m(name), "marker file"), Absent(b.out(name), "--out")],
        )
    )

    def resume_stored_payload(name: str = "resume-stored-config-payload") -> None:
        run = b.copy_run(b.need_table_run(), name, interrupted=True)
        text = (run / "config.yaml").read_text()
        text = text.replace("  subset: null", "  subset: " + json.dumps(b.payload(name)), 1)
        if json.dumps(b.payload(name)) not in text:
            raise HarnessError("could not put the payload into config.yaml")
        (run / "config.yaml").write_text(text)

    name = "resume-stored-config-payload"
    run = b.case_dir(name) / "run"
    add(
        Case(
            name,
            "security",
            ["fit", "--resume", "--out", str(run)],
            setup=resume_stored_payload,
            guards=[
                Absent(m(name), "marker file"),
                Unchanged(run / "config.yaml"),
                Unchanged(run / "splits.csv"),
            ],
        )
    )

    def pickled_checkpoint(name: str) -> None:
        import torch

        run = b.copy_run(b.need_table_run(), name, interrupted=True)
        payload = {"epoch": 1, "state_dict": _Payload(f"touch {m(name)}")}
        torch.save(payload, run / "checkpoints" / "last.ckpt")

    name = "resume-pickled-checkpoint"
    run = b.case_dir(name) / "run"
    add(
        Case(
            name,
            "security",
            [*b.fit_argv(run), "--resume"],
            setup=lambda name=name: pickled_checkpoint(name),
            guards=[
                Absent(m(name), "marker file"),
                Unchanged(run / "config.yaml"),
                Unchanged(run / "splits.csv"),
            ],
        )
    )

    def pickled_model(name: str) -> None:
        import torch

        run = b.copy_run(b.need_table_run(), name)
        torch.save({"state_dict": _Payload(f"touch {m(name)}")}, run / "model.pt")

    for command in ("evaluate", "predict", "embed"):
        name = f"{command}-pickled-model"
        run = b.case_dir(name) / "run"
        x = b.case_dir(name) / "X.csv"
        argv = [command, str(run)]
        guards: list[Guard] = [Absent(m(name), "marker file")]
        if command != "evaluate":
            argv += ["--data", str(b.manifest), "--out", str(x)]
            guards.append(Absent(x, "X.csv"))
        add(
            Case(
                name,
                "security",
                argv,
                setup=lambda name=name: pickled_model(name),
                guards=guards,
            )
        )

    # -- damaged run files ----------------------------------------------------------------------
    def damage(name: str, leaf: str, how: str, src: Callable[[], Path] | None = None) -> None:
        import torch

        run = b.copy_run((src or b.need_table_run)(), name)
        path = run / leaf
        if how == "zero":
            path.write_bytes(b"")
        elif how == "truncate":
            path.write_bytes(path.read_bytes()[:3000])
        elif how == "other-dict":
            torch.save({"x": 1}, path)
        elif how == "json":
            path.write_text('{"a":')
        elif how == "missing":
            path.unlink()

    damaged = [
        ("zero-byte-model", "model.pt", "zero", ("evaluate", "predict", "embed")),
        ("truncated-model", "model.pt", "truncate", ("evaluate", "predict", "embed")),
        ("other-dict-model", "model.pt", "other-dict", ("evaluate", "predict")),
        ("damaged-run-json", "run.json", "json", ("evaluate", "predict", "report")),
        ("missing-model", "model.pt", "missing", ("evaluate", "predict")),
        ("no-predictions-csv", "predictions.csv", "missing", ("evaluate",)),
        ("no-embeddings-csv", "embeddings.csv", "missing", ("evaluate",)),
    ]
    for label, leaf, how, commands in damaged:
        for command in commands:
            name = f"{command}-{label}"
            run = b.case_dir(name) / "run"
            x = b.case_dir(name) / ("X.html" if command == "report" else "X.csv")
            if command == "evaluate":
                argv, guards = [command, str(run)], [Unchanged(run)]
            elif command == "report":
                argv = [command, str(run), "--out", str(x)]
                guards = [Unchanged(run), Absent(x, "X.html")]
            else:
                argv = [command, str(run), "--data", str(b.manifest), "--out", str(x)]
                guards = [Unchanged(run), Absent(x, "X.csv")]
            add(
                Case(
                    name,
                    "files",
                    argv,
                    setup=lambda name=name, leaf=leaf, how=how: damage(name, leaf, how),
                    guards=guards,
                )
            )
    name = "evaluate-image-truncated-model"
    run = b.case_dir(name) / "run"
    add(
        Case(
            name,
            "files",
            ["evaluate", str(run)],
            setup=lambda name=name: damage(name, "model.pt", "truncate", b.need_image_run),
            guards=[Unchanged(run)],
        )
    )

    # -- evaluate --labels ----------------------------------------------------------------------
    rng = random.Random(0)

    def labels_case(name: str, content: bytes | str | None, src: str = "unlabelled") -> None:
        run = b.case_dir(name) / "run"
        labels = b.case_dir(name) / "labels.csv"

        def setup() -> None:
            b.copy_run(b.need_unlabelled_run() if src == "unlabelled" else b.need_table_run(), name)
            if content is not None:
                b.write(name, labels.name, content)

        add(
            Case(
                name,
                "labels",
                ["evaluate", str(run), "--labels", str(labels)],
                setup=setup,
                guards=[Unchanged(run)],
            )
        )

    frame = make_manifest()
    site2 = frame[frame["site"] == "site2"][["subject", "age"]]
    good_labels = site2.to_csv(index=False)
    bad_age = site2.astype({"age": object})
    bad_age.iloc[3, 1] = "abc"
    labels_case("labels-missing-file", None)
    labels_case("labels-binary-bytes", rng.randbytes(4000))
    labels_case("labels-wrong-columns", "foo,bar\n1,2\n3,4\n")
    labels_case("labels-empty-file", "")
    labels_case("labels-on-run-without-unlabelled-site", good_labels, src="table")
    labels_case("labels-non-numeric-age", bad_age.to_csv(index=False))
    labels_case("labels-no-matching-subject", "subject,age\nnobody,40\nnoone,50\n")

    # -- resume ---------------------------------------------------------------------------------
    def resume_case(name: str, damage_run: Callable[[Path], None], data: Path | None = None):
        run = b.case_dir(name) / "run"

        def setup() -> None:
            copy = b.copy_run(b.need_table_run(), name, interrupted=True)
            damage_run(copy)

        add(
            Case(
                name,
                "resume",
                [*b.fit_argv(run, data=data), "--resume"],
                setup=setup,
                guards=[Unchanged(run / "config.yaml"), Unchanged(run / "splits.csv")],
            )
        )

    name = "resume-manifest-5-rows-fewer"
    short = b.case_dir(name) / "m.csv"
    resume_case(
        name,
        lambda run, name=name: b.variant(name, lambda f: f.iloc[5:]) and None,
        data=short,
    )

    def truncate_ckpt(run: Path) -> None:
        path = run / "checkpoints" / "last.ckpt"
        path.write_bytes(path.read_bytes()[:2000])

    resume_case("resume-truncated-checkpoint", truncate_ckpt)
    resume_case("resume-no-checkpoint", lambda run: shutil.rmtree(run / "checkpoints") and None)
    resume_case(
        "resume-zero-byte-checkpoint",
        lambda run: (run / "checkpoints" / "last.ckpt").write_bytes(b"") and None,
    )
    name = "resume-missing-folder"
    add(
        Case(
            name,
            "resume",
            [*b.fit_argv(b.out(name)), "--resume"],
            guards=[Absent(b.out(name), "--out")],
        )
    )

    # -- targets --------------------------------------------------------------------------------
    def target_case(name: str, change: Callable[[pd.DataFrame], Any], *extra: str) -> None:
        data = b.case_dir(name) / "m.csv"
        setup = lambda name=name, change=change: b.variant(name, change) and None  # noqa: E731
        add(Case(f"check-{name}", "targets", b.check_argv(*extra, data=data), setup=setup))
        add(
            Case(
                f"fit-{name}",
                "targets",
                b.fit_argv(b.out(f"fit-{name}"), *extra, data=data),
                setup=setup,
                guards=[Absent(b.out(f"fit-{name}"), "--out")],
            )
        )

    def set_age(value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            frame["age"] = frame["age"].astype(object)
            frame.loc[7, "age"] = value
            return frame

        return change

    target_case("age-negative", set_age(-5))
    target_case("age-1e6", set_age(1e6))
    target_case("age-1e300", set_age(1e300))
    target_case("age-infinite", set_age("inf"))
    target_case("age-abc", set_age("abc"))
    target_case(
        "age-constant-regression",
        lambda f: f.assign(age=50.0),
        "--task",
        "regression",
    )

    # -- settings -------------------------------------------------------------------------------
    def fit_flag_case(name: str, *extra: str, base: list[str] | None = None) -> None:
        argv = base if base is not None else b.fit_argv(b.out(name), *extra)
        add(Case(name, "settings", argv, guards=[Absent(b.out(name), "--out")]))

    for setting in (
        "confounds.x.name=foo",
        "train.epochs.x=1",
        "train.precision=banana",
        "train.accelerator=tpu9",
        "train.devices=abc",
        "confounds.5.name=x",
        "train.nope=1",
        "train.epochs=0",
        "train.lr=-1",
        "train..x=1",
        "noequals",
    ):
        fit_flag_case(f"set-{re.sub(r'[^A-Za-z0-9]+', '-', setting).strip('-')}", "--set", setting)

    def replaced(name: str, flag: str, value: str) -> list[str]:
        argv = b.fit_argv(b.out(name))
        argv[argv.index(flag) + 1] = value
        return argv

    fit_flag_case("strategy-unknown", base=replaced("strategy-unknown", "--strategy", "foo"))
    fit_flag_case(
        "unlearn-no-such-column",
        base=replaced("unlearn-no-such-column", "--unlearn", "nosuchcolumn"),
    )
    fit_flag_case("features-bad-regex", base=replaced("features-bad-regex", "--features", "("))
    fit_flag_case(
        "features-match-nothing", base=replaced("features-match-nothing", "--features", "^zzz")
    )
    fit_flag_case("target-no-such-column", base=replaced("target-no-such-column", "--target", "x"))
    fit_flag_case("task-unknown", "--task", "banana")
    fit_flag_case("unlearn-bad-option", base=replaced("unlearn-bad-option", "--unlearn", "site:x"))
    fit_flag_case("unlabelled-site-unknown", "--unlabelled-site", "nosuchsite")

    # -- output paths ---------------------------------------------------------------------------
    def output_case(name: str, argv: list[str], setup: Callable[[], None], guard: Path) -> None:
        add(Case(name, "outputs", argv, setup=setup, guards=[Unchanged(guard)]))

    def existing_file(name: str) -> Path:
        return b.case_dir(name) / "existing.txt"

    def make_file(name: str) -> None:
        b.write(name, "existing.txt", "keep me\n")

    def existing_folder(name: str) -> Path:
        return b.case_dir(name) / "folder"

    def make_folder(name: str) -> None:
        b.write(name, "folder/keep.txt", "keep me\n")

    name = "fit-out-is-a-file"
    output_case(
        name, b.fit_argv(existing_file(name)), lambda n=name: make_file(n), existing_file(name)
    )
    name = "fit-out-under-a-file"
    mcopy = b.case_dir(name) / "m.csv"
    output_case(
        name,
        b.fit_argv(mcopy / "run", data=mcopy),
        lambda n=name: b.variant(n, lambda f: f) and None,
        mcopy,
    )
    name = "fit-out-non-empty-folder"
    output_case(
        name,
        b.fit_argv(existing_folder(name)),
        lambda n=name: make_folder(n),
        existing_folder(name),
    )

    def with_run(fn: Callable[[], None]) -> Callable[[], None]:
        def setup() -> None:
            b.need_table_run()
            fn()

        return setup

    for command in ("predict", "embed"):
        name = f"{command}-out-existing-folder"
        output_case(
            name,
            [
                command,
                str(b.table_run),
                "--data",
                str(b.manifest),
                "--out",
                str(existing_folder(name)),
            ],
            with_run(lambda n=name: make_folder(n)),
            existing_folder(name),
        )
        name = f"{command}-out-under-a-file"
        mcopy = b.case_dir(name) / "m.csv"
        output_case(
            name,
            [command, str(b.table_run), "--data", str(mcopy), "--out", str(mcopy / "x.csv")],
            with_run(lambda n=name: b.variant(n, lambda f: f) and None),
            mcopy,
        )
    name = "report-out-existing-folder"
    output_case(
        name,
        ["report", str(b.table_run), "--out", str(existing_folder(name))],
        with_run(lambda n=name: make_folder(n)),
        existing_folder(name),
    )
    name = "report-out-under-a-file"
    output_case(
        name,
        ["report", str(b.table_run), "--out", str(existing_file(name) / "r.html")],
        with_run(lambda n=name: make_file(n)),
        existing_file(name),
    )
    name = "simulate-into-a-file"
    output_case(
        name,
        ["simulate", str(existing_file(name)), "--subjects", "30", "--shape", "32"],
        lambda n=name: make_file(n),
        existing_file(name),
    )
    name = "compare-out-is-a-file"
    output_case(
        name,
        [
            "compare",
            "--data",
            str(b.manifest),
            "--features",
            FEATURE_REGEX,
            "--target",
            "age",
            "--unlearn",
            "site",
            "--epochs",
            "2",
            *FAST,
            "--out",
            str(existing_file(name)),
        ],
        lambda n=name: make_file(n),
        existing_file(name),
    )
    add(
        Case(
            "evaluate-no-such-run",
            "outputs",
            ["evaluate", str(b.out("evaluate-no-such-run"))],
            guards=[Absent(b.out("evaluate-no-such-run"))],
        )
    )

    # -- manifests ------------------------------------------------------------------------------
    def manifest_case(name: str, make: Callable[[Path], None], *, fit: bool = False) -> None:
        data = b.case_dir(name) / "m.csv"

        def setup() -> None:
            data.parent.mkdir(parents=True, exist_ok=True)
            make(data)

        add(Case(f"check-{name}", "manifests", b.check_argv(data=data), setup=setup))
        if fit:
            add(
                Case(
                    f"fit-{name}",
                    "manifests",
                    b.fit_argv(b.out(f"fit-{name}"), data=data),
                    setup=setup,
                    guards=[Absent(b.out(f"fit-{name}"), "--out")],
                )
            )

    def frame_to(change: Callable[[pd.DataFrame], pd.DataFrame], **kw: Any):
        return lambda path: change(make_manifest()).to_csv(path, index=False, **kw)

    manifest_case("manifest-missing", lambda path: None, fit=True)
    manifest_case("manifest-empty", lambda path: path.write_bytes(b""), fit=True)
    manifest_case(
        "manifest-binary", lambda path: path.write_bytes(random.Random(1).randbytes(5000)), fit=True
    )
    manifest_case("manifest-header-only", frame_to(lambda f: f.iloc[:0]))
    manifest_case("manifest-semicolons", frame_to(lambda f: f, sep=";"))
    manifest_case(
        "manifest-duplicated-row",
        frame_to(lambda f: pd.concat([f, f.iloc[[4]]], ignore_index=True)),
        fit=True,
    )

    def nan_feature(f: pd.DataFrame) -> pd.DataFrame:
        f.loc[9, "f2"] = np.nan
        return f

    manifest_case("manifest-nan-feature", frame_to(nan_feature), fit=True)
    manifest_case("manifest-no-site-column", frame_to(lambda f: f.drop(columns="site")), fit=True)

    def lone_site(f: pd.DataFrame) -> pd.DataFrame:
        extra = f.iloc[[0]].assign(subject="sub999", site="site9")
        return pd.concat([f, extra], ignore_index=True)

    manifest_case("manifest-site-with-1-subject", frame_to(lone_site), fit=True)

    def text_feature(f: pd.DataFrame) -> pd.DataFrame:
        f["f3"] = f["f3"].astype(object)
        f.loc[11, "f3"] = "n/a?"
        return f

    manifest_case("manifest-text-in-feature", frame_to(text_feature))

    # -- faults: unwritable paths, full disks, stale temporary files, kill -9 --------------------
    add(
        Case(
            "fit-out-uncreatable",
            "faults",
            b.fit_argv(UNWRITABLE_RUN),
            guards=[Absent(Path(UNWRITABLE_RUN), "--out")],
        )
    )
    name = "image-fit-cache-uncreatable"
    add(
        Case(
            name,
            "faults",
            b.image_fit_argv(b.out(name), cache=UNWRITABLE_CACHE),
            setup=b.need_cohort,
            guards=[Absent(Path(UNWRITABLE_CACHE), "cache dir"), Absent(b.out(name), "--out")],
        )
    )
    name = "fit-file-size-limit"
    add(
        Case(
            name,
            "faults",
            b.fit_argv(b.out(name)),
            fsize=20_000,
            guards=[Absent(b.out(name), "--out")],
        )
    )
    name = "simulate-file-size-limit"
    add(
        Case(
            name,
            "faults",
            ["simulate", str(b.out(name)), "--subjects", "60", "--shape", "32"],
            fsize=20_000,
            guards=[Absent(b.out(name), "output folder")],
        )
    )
    name = "image-fit-file-size-limit"
    cache = b.case_dir(name) / "cache"
    add(
        Case(
            name,
            "faults",
            b.image_fit_argv(b.out(name), cache=cache),
            setup=b.need_cohort,
            fsize=500_000,
            guards=[NoLeftovers(cache), Absent(b.out(name), "--out")],
        )
    )
    if b.tmpfs is not None:
        full = b.tmpfs
        name = "simulate-full-tmpfs"
        add(
            Case(
                name,
                "faults",
                ["simulate", str(full / "sim"), "--subjects", "60", "--shape", "32"],
                guards=[Absent(full / "sim", "output folder")],
            )
        )
        name = "image-fit-cache-on-full-tmpfs"
        add(
            Case(
                name,
                "faults",
                b.image_fit_argv(b.out(name), cache=full / "cache"),
                setup=b.need_cohort,
                guards=[NoLeftovers(full / "cache"), Absent(b.out(name), "--out")],
            )
        )
        name = "fit-out-on-full-tmpfs"
        add(
            Case(
                name,
                "faults",
                b.image_fit_argv(full / "run"),
                setup=b.need_image_run,
                guards=[Absent(full / "run", "--out")],
            )
        )
    name = "stale-cache-tmp-removed"
    cache = b.case_dir(name) / "cache"
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    stale = cache / f".volumes-abc.npy.{host}.999999.xyz123.tmp"

    def stale_setup(stale: Path = stale) -> None:
        b.need_cohort()
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"\0" * 1000)

    add(
        Case(
            name,
            "faults",
            b.image_fit_argv(b.out(name), cache=cache),
            expect="cleaned",
            setup=stale_setup,
            guards=[Removed(stale)],
        )
    )
    name = "repeated-subject-id"
    dup = b.case_dir(name) / "manifest.csv"

    def dup_setup(dup: Path = dup) -> None:
        frame = pd.read_csv(b.need_cohort() / "manifest.csv", dtype=str)
        frame.loc[6, "subject"] = frame.loc[5, "subject"]
        frame["image"] = [str(b.cohort / p) for p in frame["image"]]
        if "label" in frame:
            frame["label"] = [str(b.cohort / p) for p in frame["label"]]
        dup.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(dup, index=False)

    def names_rows(stdout: str, stderr: str) -> str | None:
        warned = [x for x in _lines(stdout) + _lines(stderr) if x.startswith("warning:")]
        if any("6" in x and "7" in x and "row" in x for x in warned):
            return None
        return "the warning does not name rows 6 and 7"

    add(
        Case(
            name,
            "faults",
            [
                "check",
                "--data",
                str(dup),
                "--input",
                "image",
                "--target",
                "age",
                "--unlearn",
                "site",
            ],
            expect="warning",
            setup=dup_setup,
            output_check=names_rows,
        )
    )
    name = "kill-9-resume-table"
    add(
        Case(
            name,
            "faults",
            b.fit_argv(b.case_dir(name) / "killed", "--epochs", "10"),
            expect="identical",
            runner=kill_and_resume(b, lambda out: b.fit_argv(out, "--epochs", "10"), 4),
        )
    )
    name = "kill-9-resume-image"
    add(
        Case(
            name,
            "faults",
            b.image_fit_argv(b.case_dir(name) / "killed", epochs=6),
            expect="identical",
            setup=b.need_image_run,  # the cache is built and shared
            runner=kill_and_resume(b, lambda out: b.image_fit_argv(out, epochs=6), 2),
        )
    )
    return cases


# -- output ---------------------------------------------------------------------------------------
def _short(text: str, n: int = FIRST_LINE_CHARS) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("neurounlearn", "torch", "lightning", "numpy", "pandas"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def render(payload: dict[str, Any]) -> str:
    meta, totals = payload["meta"], payload["totals"]
    lines = [
        "# Robustness of the CLI: bad input and faults",
        "",
        f"**{totals['handled']}/{totals['cases']} handled** in {meta['wall_seconds']:.0f} s "
        f"({meta['cores']} CPU cores, euid {meta['euid']}; tmpfs cases: {meta['tmpfs']}).",
        "",
        "Handled: the expected exit code (2 for bad input), no traceback, every stderr line an "
        "`error:`/`warning:` or progress/info line, and nothing half-written (case-specific "
        "guards: output absent, inputs byte-identical, payload marker absent).",
        "",
    ]
    if totals["not_handled"]:
        lines += ["## Not handled", ""]
        for r in payload["cases"]:
            if not r["handled"]:
                lines.append(f"- `{r['name']}`: {r.get('reason', '')}")
        lines.append("")
    head = ["case", "group", "expect", "exit", "handled", "first error line"]
    rows = [
        [
            f"`{r['name']}`",
            str(r["group"]),
            str(r["expect"]),
            str(r["rc"]),
            "yes" if r["handled"] else "**no**",
            _short(r.get("first_line") or r.get("reason", "")).replace("|", "\\|"),
        ]
        for r in payload["cases"]
    ]
    lines.append(markdown_table(head, rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="neurounlearn-robustness-"))
    bench = Bench(root)
    results: list[dict[str, Any]] = []
    try:
        bench.mount_tmpfs()
        print(f"temporary folder {root}; tmpfs full-disk cases: {bench.tmpfs_note}", flush=True)
        cases = build_cases(bench)
        if args.only:
            cases = [c for c in cases if args.only in c.name]
        names = [c.name for c in cases]
        if len(set(names)) != len(names):
            raise HarnessError("duplicate case names")
        width = max([len(n) for n in names] + [4])
        header = f"{'case':<{width}}  {'expect':<9}  exit  handled  first error line"
        print(header + "\n" + "-" * len(header), flush=True)
        for case in cases:
            r = run_case(bench, case)
            results.append(r)
            print(
                f"{r['name']:<{width}}  {r['expect']:<9}  {r['rc']!s:>4}  "
                f"{'yes' if r['handled'] else 'NO':<7}  {_short(r['first_line'] or '')}",
                flush=True,
            )
            if not r["handled"]:
                print(f"{'':<{width}}  -> {r.get('reason', '')}", flush=True)
    finally:
        bench.unmount_tmpfs()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - start
    handled = sum(r["handled"] for r in results)
    not_handled = [r["name"] for r in results if not r["handled"]]
    payload = {
        "meta": {
            "wall_seconds": round(wall, 1),
            "cores": os.cpu_count(),
            "euid": os.geteuid(),
            "tmpfs": bench.tmpfs_note,
            "only": args.only,
            "fixture_seconds": {k: round(v, 1) for k, v in bench.fixture_seconds.items()},
            "versions": versions(),
        },
        "totals": {"cases": len(results), "handled": handled, "not_handled": not_handled},
        "cases": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "robustness.md").write_text(render(payload))
    if not_handled:
        print("\nNOT handled:")
        for r in results:
            if not r["handled"]:
                print(f"  {r['name']}: {r.get('reason', '')}")
                if r.get("first_line"):
                    print(f"    first line: {_short(r['first_line'], 200)}")
    print(f"\n{handled}/{len(results)} handled")
    print(f"tmpfs full-disk cases: {bench.tmpfs_note}")
    print(
        f"wall time {wall:.0f} s ({wall / 60:.1f} min); "
        f"results in {args.out}/robustness.{{json,md}}"
    )


if __name__ == "__main__":
    main()
