"""Errors that tell the user what is wrong, where, and how to fix it.

Every problem with user input is an :class:`InputError`. The CLI prints ``str(err)`` on one line
(or one line per problem for :class:`InputErrors`) and exits with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

EXIT_INPUT_ERROR = 2


@dataclass(frozen=True)
class Problem:
    """One problem found in the input.

    Args:
        message: what is wrong, in words a researcher understands.
        file: the file it was found in, if any.
        row: 1-based data row number (the header is row 0), as a spreadsheet shows it minus one.
        column: the column name, if the problem belongs to one column.
        hint: how to fix it.
        severity: ``"error"`` stops the run; ``"warning"`` is reported and the run goes on.
    """

    message: str
    file: str | Path | None = None
    row: int | None = None
    column: str | None = None
    hint: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.hint:
            text += f" — {self.hint}"
        return text


class InputError(Exception):
    """Bad user input: a file, row or column that needs fixing before anything can run."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = Problem(message, file=file, row=row, column=column, hint=hint)
        super().__init__(str(self.problem))

    @property
    def problems(self) -> list[Problem]:
        return [self.problem]


class InputErrors(InputError):
    """Several problems found at once (the manifest check reports every one of them)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self._problems = [p for p in problems if p.severity == "error"]
        if not self._problems:
            raise ValueError("InputErrors needs at least one error-severity problem")
        first = self._problems[0]
        super().__init__(
            first.message, file=first.file, row=first.row, column=first.column, hint=first.hint
        )
        more = len(self._problems) - 1
        self.args = (str(first) + (f" (and {more} more problem(s))" if more else ""),)

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems)

    def __str__(self) -> str:
        return str(self.args[0])


def raise_if_errors(problems: Iterable[Problem]) -> None:
    """Raise :class:`InputErrors` when any problem has error severity."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise InputErrors(errors)


def require(module: str, extra: str, what: str, *, package: str | None = None) -> ModuleType:
    """Import ``module`` (an optional dependency), or raise an :class:`InputError` saying which
    extra installs it.

    Args:
        module: the module to import, e.g. ``"neuroHarmonize"``.
        extra: the ``neurounlearn[...]`` extra that declares it.
        what: what needs it, for the message (``"the ComBat arms"``).
        package: the name pip installs it by, when not the module's.

    Examples:
        >>> require("math", "none", "arithmetic").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise InputError(
            f"{what} need{'' if what.endswith('s') else 's'} the {name} package, which is not "
            "installed",
            hint=f"pip install 'neurounlearn[{extra}]' (or pip install {name})",
        ) from None
