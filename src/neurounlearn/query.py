"""Row queries (``--unlearn-where``, ``confounds[].subset``) parsed against a whitelist.

A query is never handed to :meth:`pandas.DataFrame.query` or :func:`eval`: pandas resolves
``@name`` against the calling module, so a query string could otherwise run any code. A query
is parsed into a Python syntax tree and accepted only when every node is one of

- a column name (a plain identifier, or any name in backticks: ``\\`age-years\\` > 18``),
- a number, a string, ``True`` or ``False``,
- a comparison, chained ones included (``18 <= age <= 35``),
- ``and`` / ``or`` / ``not`` (``&`` / ``|`` / ``~`` as pandas writes them),
- ``in`` / ``not in`` a literal list (``site in ['a', 'b']``),
- arithmetic (``+ - * / // % **``, unary minus).

Everything else (``@`` local variables, attributes, calls, subscripts, names with double
underscores, lambdas, comprehensions...) is refused with an :class:`InputError` that names the
query and the part refused. The checked tree is evaluated here, over the frame's columns.

Examples:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"age": [10, 20, 40], "site": ["a", "b", "a"]})
    >>> select(frame, "18 <= age <= 35 or site == 'a'").tolist()
    [True, True, True]
    >>> select(frame, "site in ['b'] & ~(age > 30)").tolist()
    [False, True, False]
    >>> check("age > @limit")
    Traceback (most recent call last):
    ...
    neurounlearn.errors.InputError: the query 'age > @limit' uses '@limit', which is not allowed ...
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.errors import InputError

MAX_LENGTH = 2000
ALLOWED = (
    "queries may use column names (backticks for other names), numbers, strings, True/False, "
    "comparisons (18 <= age <= 35), and/or/not, in/not in a literal list and arithmetic"
)
_COLUMN = "_nu_column_{}_"

_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class Query:
    """A checked query: its text, its tree and the column names it reads."""

    def __init__(self, text: str, tree: ast.Expression, columns: dict[str, str]) -> None:
        self.text = text
        self.tree = tree
        self._columns = columns  # placeholder identifier -> column name

    def column(self, identifier: str) -> str:
        return self._columns.get(identifier, identifier)

    @property
    def columns(self) -> list[str]:
        """Column names the query reads, in order of first use."""
        names = [n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name)]
        return list(dict.fromkeys(self.column(n) for n in names))


def _refuse(text: str, part: str, why: str = "") -> InputError:
    return InputError(
        f"the query {text!r} uses {part!r}, which is not allowed{why}",
        hint=ALLOWED,
    )


def _lex(text: str) -> tuple[str, dict[str, str]]:
    """Python source for ``text``: backtick names become placeholders, ``& | ~`` become words.

    String literals are copied as they are; ``@`` outside them is refused.
    """
    out: list[str] = []
    columns: dict[str, str] = {}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            j = i + 1
            while j < len(text) and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise InputError(
                    f"the query {text!r} has a string that is never closed",
                    hint=f"close the string that starts at {text[i : i + 20]!r} with {ch}",
                )
            out.append(text[i : j + 1])
            i = j + 1
        elif ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise InputError(
                    f"the query {text!r} has a backtick that is never closed",
                    hint="put column names that are not plain identifiers in `backticks`",
                )
            name = text[i + 1 : j]
            placeholder = next((k for k, v in columns.items() if v == name), None)
            if placeholder is None:
                placeholder = _COLUMN.format(len(columns))
                columns[placeholder] = name
            out.append(placeholder)
            i = j + 1
        elif ch == "@":
            j = i + 1
            while j < len(text) and (text[j].isalnum() or text[j] in "_."):
                j += 1
            raise _refuse(text, text[i:j] or "@", " (local variables are not read)")
        elif ch in "&|~":
            out.append({"&": " and ", "|": " or ", "~": " not "}[ch])
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out), columns


def _constant(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _constant(node.operand)
    return isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str))


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.UnaryOp):
        value = _literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    assert isinstance(node, ast.Constant)
    return node.value


def _check_node(node: ast.AST, text: str, source: str, columns: dict[str, str]) -> None:
    def refuse(bad: ast.AST, why: str = "") -> InputError:
        part = ast.get_source_segment(source, bad) or type(bad).__name__
        for placeholder, name in columns.items():
            part = part.replace(placeholder, f"`{name}`")
        return _refuse(text, part.strip(), why)

    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check_node(v, text, source, columns)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd, ast.Invert)):
            raise refuse(node)
        _check_node(node.operand, text, source, columns)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITHMETIC:
            raise refuse(node, " (only + - * / // % ** are)")
        _check_node(node.left, text, source, columns)
        _check_node(node.right, text, source, columns)
    elif isinstance(node, ast.Compare):
        _check_node(node.left, text, source, columns)
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.In, ast.NotIn)) or (
                isinstance(op, (ast.Eq, ast.NotEq)) and isinstance(right, (ast.List, ast.Tuple))
            ):
                if not isinstance(right, (ast.List, ast.Tuple, ast.Set)) or not all(
                    _constant(e) for e in right.elts
                ):
                    raise refuse(right, " (in / not in take a literal list, e.g. ['a', 'b'])")
            elif type(op) in _COMPARE:
                _check_node(right, text, source, columns)
            else:
                raise refuse(node, " (is / is not are not comparisons of values)")
    elif isinstance(node, ast.Name):
        if "__" in node.id and node.id not in columns:
            raise refuse(node, " (names with double underscores are refused)")
    elif isinstance(node, ast.Constant):
        if not _constant(node):
            raise refuse(node, " (constants are numbers, strings, True or False)")
    else:
        raise refuse(node)


def check(text: str) -> Query:
    """Parse ``text`` and check it against the whitelist; raise :class:`InputError` if refused."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(
            f"the query {text!r} is empty", hint="give a condition, e.g. '18 <= age <= 35'"
        )
    if len(text) > MAX_LENGTH:
        raise InputError(
            f"the query starting {text[:40]!r} is {len(text)} characters long",
            hint=f"a query may hold at most {MAX_LENGTH} characters",
        )
    source, columns = _lex(text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        where = getattr(err, "msg", None) or type(err).__name__
        raise InputError(
            f"the query {text!r} is not a valid condition: {where}",
            hint="e.g. '18 <= age <= 35' or \"site in ['a', 'b']\"; " + ALLOWED,
        ) from None
    try:
        _check_node(tree.body, text, source.strip(), columns)
    except RecursionError:
        raise InputError(
            f"the query starting {text[:40]!r} nests too deeply", hint="write a flatter condition"
        ) from None
    return Query(text, tree, columns)


def _evaluate(node: ast.AST, frame: pd.DataFrame, query: Query) -> Any:
    if isinstance(node, ast.BoolOp):
        values = [_as_bool(_evaluate(v, frame, query), query) for v in node.values]
        out = values[0]
        for v in values[1:]:
            out = (out & v) if isinstance(node.op, ast.And) else (out | v)
        return out
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, frame, query)
        if isinstance(node.op, (ast.Not, ast.Invert)):
            return ~_as_bool(value, query)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        left = _numeric(_evaluate(node.left, frame, query), query)
        right = _numeric(_evaluate(node.right, frame, query), query)
        with np.errstate(all="ignore"):
            return _ARITHMETIC[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        mask: Any = True
        left = _evaluate(node.left, frame, query)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if isinstance(right_node, (ast.List, ast.Tuple, ast.Set)):
                values = [_literal(e) for e in right_node.elts]
                inside = pd.Series(left, index=frame.index).isin(values).to_numpy()
                step = ~inside if isinstance(op, (ast.NotIn, ast.NotEq)) else inside
                right = left
            else:
                right = _evaluate(right_node, frame, query)
                try:
                    step = np.asarray(_COMPARE[type(op)](left, right), dtype=bool)
                except TypeError as err:
                    raise InputError(
                        f"the query {query.text!r} compares values of different kinds: {err}",
                        hint="compare numbers with numbers and strings with quoted strings",
                    ) from None
            mask = mask & step
            left = right
        return np.broadcast_to(np.asarray(mask, dtype=bool), (len(frame),))
    if isinstance(node, ast.Name):
        name = query.column(node.id)
        if name not in frame.columns:
            known = ", ".join(map(str, list(frame.columns)[:20]))
            raise InputError(
                f"the query {query.text!r} names column {name!r}, which the table does not have",
                column=name,
                hint=f"columns include {known}; put names with spaces or dashes in `backticks`",
            )
        return frame[name].to_numpy()
    assert isinstance(node, ast.Constant)
    return node.value


def _numeric(value: Any, query: Query) -> Any:
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.astype(np.float64)
    raise InputError(
        f"the query {query.text!r} does arithmetic on values that are not numbers",
        hint="arithmetic works on numeric columns and numbers only",
    )


def _as_bool(value: Any, query: Query) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != bool:
        raise InputError(
            f"the query {query.text!r} combines with and/or/not something that is not a condition",
            hint="write comparisons on each side, e.g. 'age > 18 and site == \"a\"'",
        )
    return array


def select(frame: pd.DataFrame, text: str | Query | None) -> np.ndarray:
    """Boolean mask of the rows of ``frame`` a query keeps (all rows when ``text`` is None)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return np.ones(len(frame), dtype=bool)
    query = text if isinstance(text, Query) else check(text)
    mask = _evaluate(query.tree.body, frame, query)
    mask = _as_bool(mask, query)
    if mask.shape != (len(frame),):
        mask = np.broadcast_to(mask, (len(frame),))
    return np.array(mask, dtype=bool)
