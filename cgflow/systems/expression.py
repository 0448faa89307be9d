"""OpenMM (Lepton) energy expressions as vectorised numpy functions.

A toy potential is written once, in Lepton syntax, and used twice: OpenMM compiles it for
sampling, and this module turns the same text into a numpy function for per-walker energies
and the exact quadrature reference. The text is checked token by token against Lepton's
grammar (numbers, operators, the coordinate names and Lepton's functions) before sympy
parses it, so no other Python is ever evaluated from a config.
"""

from __future__ import annotations

import io
import keyword
import tokenize
from dataclasses import dataclass
from typing import Callable

import numpy as np

COORDINATES = ("x", "y", "z")

LEPTON_FUNCTIONS = (
    "sqrt", "exp", "log", "sin", "cos", "sec", "csc", "tan", "cot", "asin", "acos", "atan",
    "atan2", "sinh", "cosh", "tanh", "erf", "erfc", "step", "delta", "square", "cube",
    "recip", "min", "max", "abs", "floor", "ceil", "select",
)
_OPERATORS = {"+", "-", "*", "/", "^", "(", ")", ","}


class ExpressionError(ValueError):
    """The text is not a Lepton expression in the allowed variables."""


@dataclass(frozen=True)
class Expression:
    """A parsed Lepton expression: its text, the coordinates it uses, a numpy evaluator."""

    text: str
    variables: tuple[str, ...]
    _fn: Callable

    def __call__(self, **coords: np.ndarray) -> np.ndarray:
        args = [np.asarray(coords[v], dtype=float) for v in self.variables]
        out = self._fn(*args)
        shape = np.broadcast_shapes(*(a.shape for a in args)) if args else ()
        return np.broadcast_to(np.asarray(out, dtype=float), shape).copy()


def _sympy_functions() -> dict:
    import sympy as sp

    def select(c, a, b):
        return sp.Piecewise((b, sp.Eq(c, 0)), (a, True))

    return {
        "sqrt": sp.sqrt, "exp": sp.exp, "log": sp.log, "sin": sp.sin, "cos": sp.cos,
        "sec": sp.sec, "csc": sp.csc, "tan": sp.tan, "cot": sp.cot, "asin": sp.asin,
        "acos": sp.acos, "atan": sp.atan, "atan2": sp.atan2, "sinh": sp.sinh,
        "cosh": sp.cosh, "tanh": sp.tanh, "erf": sp.erf, "erfc": sp.erfc,
        "step": lambda u: sp.Heaviside(u, 1),
        "delta": lambda u: sp.Piecewise((1, sp.Eq(u, 0)), (0, True)),
        "square": lambda u: u**2, "cube": lambda u: u**3, "recip": lambda u: 1 / u,
        "min": sp.Min, "max": sp.Max, "abs": sp.Abs, "floor": sp.floor,
        "ceil": sp.ceiling, "select": select,
    }


def _check_tokens(text: str, names: set[str]) -> None:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise ExpressionError(f"cannot read {text!r}: {exc}") from None
    for tok in tokens:
        if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        if tok.type == tokenize.NUMBER:
            if any(c in tok.string.lower() for c in "jx_") or tok.string.lower().startswith("0b"):
                raise ExpressionError(f"{tok.string!r} is not a Lepton number")
            continue
        if tok.type == tokenize.NAME and tok.string in names and not keyword.iskeyword(tok.string):
            continue
        if tok.type == tokenize.OP and tok.string in _OPERATORS:
            continue
        allowed = ", ".join(sorted(names - set(LEPTON_FUNCTIONS)))
        raise ExpressionError(
            f"{tok.string!r} is not allowed (variables: {allowed}; operators + - * / ^; "
            "functions: OpenMM's Lepton functions such as exp, sqrt, step, min)"
        )


def parse(text: str, variables: tuple[str, ...] = COORDINATES) -> Expression:
    """Parse Lepton ``text`` (``expr; name=expr; ...`` definitions allowed) in ``variables``."""
    import sympy as sp
    from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("the expression is empty")
    main, *definitions = [part.strip() for part in text.split(";")]
    symbols = {v: sp.Symbol(v, real=True) for v in variables}
    functions = _sympy_functions()
    defined: dict[str, str] = {}
    for definition in definitions:
        if not definition:
            continue
        name, sep, body = definition.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or name in symbols or name in functions:
            raise ExpressionError(f"{definition!r} is not a definition of the form name = expression")
        defined[name] = body
    names = set(symbols) | set(functions) | set(defined)
    local = {**symbols, **functions}
    transformations = standard_transformations + (convert_xor,)

    def to_sympy(part: str, seen: tuple[str, ...] = ()):
        _check_tokens(part, names)
        expr = parse_expr(part, local_dict=dict(local), global_dict={"__builtins__": {}, **_sympy_globals()},
                          transformations=transformations, evaluate=True)
        subs = {}
        for sym in expr.free_symbols:
            if sym.name in defined:
                if sym.name in seen:
                    raise ExpressionError(f"definition of {sym.name!r} refers to itself")
                subs[sym] = to_sympy(defined[sym.name], seen + (sym.name,))
        return expr.subs(subs) if subs else expr

    try:
        expr = to_sympy(main)
    except ExpressionError:
        raise
    except Exception as exc:  # sympy raises many types for malformed text
        raise ExpressionError(f"cannot parse {text!r}: {exc}") from None
    unknown = {s.name for s in expr.free_symbols} - set(variables)
    if unknown:
        raise ExpressionError(f"unknown variable(s) {sorted(unknown)} (allowed: {', '.join(variables)})")
    used = tuple(v for v in variables if symbols[v] in expr.free_symbols)
    fn = sp.lambdify([symbols[v] for v in used], expr, modules=["numpy", "scipy"])  # scipy: erf, erfc on arrays
    return Expression(text=text, variables=used, _fn=fn)


def _sympy_globals() -> dict:
    import sympy as sp

    return {"Integer": sp.Integer, "Float": sp.Float, "Rational": sp.Rational, "Symbol": sp.Symbol}
