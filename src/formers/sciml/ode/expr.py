"""Expression trees for ODE systems: ODEFormer's operator set, prefix tokens, sympy, evaluation.

Source: d'Ascoli et al., "ODEFormer: Symbolic Regression of Dynamical Systems with Transformers"
(arXiv 2310.05573), section 3 ("Tokenization"), reference code ``odeformer/envs/generators.py``
(``operators_real``) and ``odeformer/envs/encoders.py::Equation``.

Stable interface (used by the model side; keep the signatures):

* ``Node(op, children=(), value=0.0)``: a frozen, hashable tree node. ``op`` is an operator of
  ``BINARY``/``UNARY``, a variable ``"x_<j>"``, ``"t"`` or ``"const"`` (then ``value`` holds it).
  Helpers: ``var(j)``, ``const(v)``, ``op(name, *children)``.
* A **system** is a tuple of Nodes, one per component: ``x_d' = system[d]``
  (``System = tuple[Node, ...]``; functions also take lists).
* ``to_prefix(system) -> list[str]``: Polish notation, ``"|"`` between components, each
  constant as the 3 float-codec tokens of :mod:`formers.sciml.ode.codec` (as the paper does),
  e.g. ``x_0' = 1.2 sin(x_1)`` -> ``["mul", "+", "N1200", "E-3", "sin", "x_1"]``.
* ``from_prefix(tokens, max_dim=None) -> system`` (ValueError on malformed input).
* ``vocabulary(max_dim=6) -> list[str]``: the output tokens: ``SPECIAL_TOKENS``, ``"|"``, the
  operators, ``x_0..x_<max_dim-1>``, ``"t"``, then ``codec.FLOAT_TOKENS``.
* ``to_sympy(system) -> list[sympy.Expr]``, ``from_sympy(exprs) -> system``, ``parse(text)``
  (sympy syntax, components separated by ``|``), ``simplify(system, full=False)``,
  ``round_constants(system, digits=4)``, ``to_str(system)`` (readable infix).
* ``evaluate(system, x: ndarray (n, dim), t=None) -> ndarray (n, dim)`` (numpy, NaN/inf where an
  operator is undefined; never raises on arithmetic), ``evaluate_torch`` (same on torch tensors).
* ``integrate(system, x0, t, ...) -> ndarray (len(t), dim)``: scipy LSODA with ODEBench's
  tolerances (rtol 1e-5, atol 1e-7, first_step 1e-6, min_step 1e-10), a terminal blow-up event
  and a wall-clock timeout; rows after a stop or failure are NaN.
* ``complexity(system) -> int``: number of tree nodes over all components (a constant counts 1).

Operators (reference ``operators_real`` plus ``pow``): binary add, sub, mul, div, pow; unary abs,
inv, sqrt, log, exp, sin, arcsin, cos, arccos, tan, arctan, pow2, pow3, id. Semantics are numpy's
(``sqrt``/``log`` of negatives give NaN; ``inv(0)`` gives inf).

Deviation (named in docs/papers.md): sympy -> tree uses the whole operator set (``sub``, ``div``,
``inv``, ``pow2``, ``pow3``, ``sqrt``) where the reference writes ``add``/``mul``/``pow`` with
integer exponent tokens; sequences are shorter and every integer is a codec float. ``cot``,
``sec``, ``csc`` (in ODEBench) are written as cos/sin, 1/cos, 1/sin, as the reference does.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from formers.sciml.ode import codec

BINARY = ("add", "sub", "mul", "div", "pow")
UNARY = ("abs", "inv", "sqrt", "log", "exp", "sin", "arcsin", "cos", "arccos", "tan", "arctan",
         "pow2", "pow3", "id")
ARITY = {**{o: 2 for o in BINARY}, **{o: 1 for o in UNARY}}
SEPARATOR = "|"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
MAX_DEPTH = 100  # deeper trees are refused by from_prefix (Python cannot compile them for evaluation)
_VAR = re.compile(r"^x_(\d+)$")


@dataclass(frozen=True)
class Node:
    """One node of an expression tree (immutable and hashable, so systems can be cache keys).

    op: an operator name (``BINARY``/``UNARY``), ``"x_<j>"``, ``"t"`` or ``"const"``.
    children: the operands (2 for binary, 1 for unary, none for leaves).
    value: the constant's value when ``op == "const"``.
    """

    op: str
    children: tuple["Node", ...] = ()
    value: float = 0.0

    def __post_init__(self) -> None:
        want = ARITY.get(self.op, 0)
        if self.op not in ARITY and self.op not in ("const", "t") and not _VAR.match(self.op):
            raise ValueError(f"unknown node op {self.op!r}; allowed: {BINARY + UNARY}, x_<j>, t, const")
        if len(self.children) != want:
            raise ValueError(f"{self.op} takes {want} operand(s), got {len(self.children)}")

    def size(self) -> int:
        """Number of nodes in this subtree."""
        return 1 + sum(c.size() for c in self.children)

    def walk(self):
        """All nodes of the subtree in prefix order."""
        yield self
        for c in self.children:
            yield from c.walk()


System = tuple[Node, ...]


def var(j: int) -> Node:
    """The state variable ``x_j`` (0-based)."""
    return Node(f"x_{int(j)}")


def const(v: float) -> Node:
    """A constant leaf."""
    return Node("const", value=float(v))


def op(name: str, *children: Node) -> Node:
    """An operator node, e.g. ``op("mul", const(2.0), var(0))``."""
    return Node(name, tuple(children))


def _as_system(system: Sequence[Node] | Node) -> System:
    if isinstance(system, Node):
        return (system,)
    system = tuple(system)
    if not system or not all(isinstance(c, Node) for c in system):
        raise TypeError("a system is a non-empty sequence of Node (one per component)")
    return system


def variables(system: Sequence[Node]) -> set[int]:
    """Indices j of the variables x_j used anywhere in the system."""
    return {int(n.op[2:]) for c in _as_system(system) for n in c.walk() if n.op.startswith("x_")}


def complexity(system: Sequence[Node]) -> int:
    """Total number of tree nodes over all components (operators + variables + constants)."""
    return sum(c.size() for c in _as_system(system))


def substitute(node: Node, mapping: dict[str, Node]) -> Node:
    """Replace every leaf whose op is a key of ``mapping`` (``"x_0"``, ``"t"``) by its tree."""
    if not node.children:
        return mapping.get(node.op, node)
    return Node(node.op, tuple(substitute(c, mapping) for c in node.children), node.value)


def round_constants(system: Sequence[Node], digits: int = 4) -> System:
    """Round every constant to ``digits`` significant digits (4 = what the codec keeps), so that
    ``from_prefix(to_prefix(s)) == s`` holds exactly for the result."""
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")

    def rnd(n: Node) -> Node:
        if n.op == "const":
            v = n.value
            return const(float(f"%.{digits - 1}e" % v) if math.isfinite(v) else v)
        if not n.children:
            return n
        return Node(n.op, tuple(rnd(c) for c in n.children))

    return tuple(rnd(c) for c in _as_system(system))


# ----------------------------------------------------------------------------- prefix tokens

def vocabulary(max_dim: int = 6) -> list[str]:
    """All output tokens for systems of up to ``max_dim`` components (see the module docstring)."""
    if max_dim < 1:
        raise ValueError(f"max_dim must be >= 1, got {max_dim}")
    return (list(SPECIAL_TOKENS) + [SEPARATOR] + list(BINARY) + list(UNARY)
            + [f"x_{j}" for j in range(max_dim)] + ["t"] + codec.FLOAT_TOKENS)


def _prefix(node: Node, out: list[str]) -> None:
    if node.op == "const":
        out.extend(codec.encode_float(node.value))
        return
    out.append(node.op)
    for c in node.children:
        _prefix(c, out)


def to_prefix(system: Sequence[Node]) -> list[str]:
    """Polish-notation tokens with ``"|"`` between components; constants as 3 codec tokens."""
    out: list[str] = []
    for i, c in enumerate(_as_system(system)):
        if i:
            out.append(SEPARATOR)
        _prefix(c, out)
    return out


def from_prefix(tokens: Sequence[str], max_dim: int | None = None) -> System:
    """Parse prefix tokens (as written by :func:`to_prefix`) back into a system.

    Args:
        tokens: the token list; ``"|"`` separates components.
        max_dim: if given, the number of components and every variable index must stay below it.

    Raises:
        ValueError: empty input or component, an unknown token, a missing operand, leftover
            tokens in a component, a malformed float, too many components/variables, or a
            tree deeper than ``MAX_DEPTH``.
    """
    tokens = list(tokens)
    if not tokens:
        raise ValueError("empty token sequence")
    parts: list[list[str]] = [[]]
    for tok in tokens:
        if tok == SEPARATOR:
            parts.append([])
        else:
            parts[-1].append(tok)
    if max_dim is not None and len(parts) > max_dim:
        raise ValueError(f"{len(parts)} components exceed max_dim {max_dim}")
    system = []
    for k, part in enumerate(parts):
        if not part:
            raise ValueError(f"component {k} is empty")
        node, pos = _parse(part, 0, k, 0)
        if pos != len(part):
            raise ValueError(f"component {k}: {len(part) - pos} leftover token(s) {part[pos:pos + 5]}")
        system.append(node)
    if max_dim is not None and variables(system) and max(variables(system)) >= max_dim:
        raise ValueError(f"variable x_{max(variables(system))} exceeds max_dim {max_dim}")
    return tuple(system)


def _parse(toks: list[str], pos: int, k: int, depth: int) -> tuple[Node, int]:
    if depth > MAX_DEPTH:
        raise ValueError(f"component {k}: expression nested deeper than {MAX_DEPTH} levels")
    if pos >= len(toks):
        raise ValueError(f"component {k}: expression ends early (an operator lacks an operand)")
    tok = toks[pos]
    if tok in ARITY:
        children = []
        pos += 1
        for _ in range(ARITY[tok]):
            child, pos = _parse(toks, pos, k, depth + 1)
            children.append(child)
        return Node(tok, tuple(children)), pos
    if tok in codec.SIGNS or tok == codec.NAN_TOKEN:
        if pos + 3 > len(toks):
            raise ValueError(f"component {k}: float at token {pos} has fewer than 3 tokens")
        return const(codec.decode_float(toks[pos:pos + 3])), pos + 3
    if tok == "t" or _VAR.match(tok):
        return Node(tok), pos + 1
    raise ValueError(f"component {k}: unknown token {tok!r} at position {pos}")


# ----------------------------------------------------------------------------- readable form

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _infix(n: Node) -> str:
    if n.op == "const":
        return f"{n.value:.4g}"
    if not n.children:
        return n.op
    a = [_infix(c) for c in n.children]
    if n.op in _INFIX:
        return f"({a[0]} {_INFIX[n.op]} {a[1]})"
    if n.op == "pow":
        return f"({a[0]})^({a[1]})"
    if n.op == "pow2":
        return f"({a[0]})^2"
    if n.op == "pow3":
        return f"({a[0]})^3"
    if n.op == "inv":
        return f"1/({a[0]})"
    if n.op == "id":
        return a[0]
    return f"{n.op}({a[0]})"


def to_str(system: Sequence[Node]) -> str:
    """Readable infix, one line per component: ``x_0' = ...``. Constants shown with 4 digits."""
    return "\n".join(f"x_{d}' = {_infix(c)}" for d, c in enumerate(_as_system(system)))


# ----------------------------------------------------------------------------- sympy

def _sympy():
    try:
        import sympy
    except ImportError as e:  # pragma: no cover - sympy comes with torch
        raise ImportError("sympy is needed for symbolic conversion: pip install sympy "
                          "(it is installed with torch)") from e
    return sympy


def _symbols(dim: int):
    sp = _sympy()
    return [sp.Symbol(f"x_{j}", real=True) for j in range(dim)], sp.Symbol("t", real=True)


def to_sympy(system: Sequence[Node]) -> list[Any]:
    """One sympy expression per component (symbols ``x_j`` and ``t`` are real)."""
    sp = _sympy()
    system = _as_system(system)
    xs, t = _symbols(max(variables(system), default=-1) + 1)
    fn = {"abs": sp.Abs, "sqrt": sp.sqrt, "log": sp.log, "exp": sp.exp, "sin": sp.sin,
          "arcsin": sp.asin, "cos": sp.cos, "arccos": sp.acos, "tan": sp.tan, "arctan": sp.atan}

    def conv(n: Node):
        if n.op == "const":
            return sp.Float(n.value) if math.isfinite(n.value) else sp.nan
        if n.op == "t":
            return t
        if not n.children:
            return xs[int(n.op[2:])]
        a = [conv(c) for c in n.children]
        if n.op == "add":
            return a[0] + a[1]
        if n.op == "sub":
            return a[0] - a[1]
        if n.op == "mul":
            return a[0] * a[1]
        if n.op == "div":
            return a[0] / a[1]
        if n.op == "pow":
            return a[0] ** a[1]
        if n.op == "inv":
            return 1 / a[0]
        if n.op == "pow2":
            return a[0] ** 2
        if n.op == "pow3":
            return a[0] ** 3
        if n.op == "id":
            return a[0]
        return fn[n.op](a[0])

    return [conv(c) for c in system]


def _number(expr) -> float | None:
    """The float value of a numeric sympy atom/constant (pi, E, Rational...), else None."""
    if expr.is_number and not expr.free_symbols:
        try:
            v = complex(expr)
        except (TypeError, ValueError):
            return None
        if v.imag != 0:
            raise ValueError(f"complex constant {expr} cannot be a real ODE coefficient")
        return float(v.real)
    return None


def from_sympy(exprs: Sequence[Any] | Any) -> System:
    """sympy expression(s) -> system; symbols must be ``x_<j>`` or ``t``.

    Raises:
        ValueError: an unsupported function or symbol (the message names it).
    """
    sp = _sympy()
    if isinstance(exprs, sp.Basic):
        exprs = [exprs]
    unary = {sp.Abs: "abs", sp.log: "log", sp.exp: "exp", sp.sin: "sin", sp.asin: "arcsin",
             sp.cos: "cos", sp.acos: "arccos", sp.tan: "tan", sp.atan: "arctan"}

    def power(base: Node, e: float) -> Node:
        table = {2.0: "pow2", 3.0: "pow3", 0.5: "sqrt", 1.0: "id"}
        if e in table:
            return base if e == 1.0 else op(table[e], base)
        return op("pow", base, const(e))

    def conv(e) -> Node:
        v = _number(e)
        if v is not None:
            return const(v)
        if isinstance(e, sp.Symbol):
            if e.name == "t" or _VAR.match(e.name):
                return Node(e.name)
            raise ValueError(f"unknown symbol {e.name!r}: variables are x_0, x_1, ... and t")
        if isinstance(e, sp.Add):
            terms = list(e.args)
            terms.sort(key=lambda a: a.could_extract_minus_sign())  # positive terms first
            acc = conv(terms[0])
            for a in terms[1:]:
                acc = op("sub", acc, conv(-a)) if a.could_extract_minus_sign() else op("add", acc, conv(a))
            return acc
        if isinstance(e, sp.Mul):
            coef, rest = e.as_coeff_Mul()  # Float coefficients too (as_coeff_mul keeps only Rationals)
            factors = sp.Mul.make_args(rest)
            num, den = [], []
            for f in factors:
                b, p = f.as_base_exp()
                pv = _number(p)
                if pv is not None and pv < 0:
                    den.append(conv(b) if pv == -1 else power(conv(b), -pv))
                else:
                    num.append(conv(f))
            c = float(coef)
            body = functools.reduce(lambda a, b: op("mul", a, b), num) if num else None
            if den:
                d = functools.reduce(lambda a, b: op("mul", a, b), den)
                if body is None:
                    return op("inv", d) if c == 1 else op("div", const(c), d)
                body = op("div", body, d)
            if body is None:
                return const(c)
            return body if c == 1 else op("mul", const(c), body)
        if isinstance(e, sp.Pow):
            b, p = e.args
            pv = _number(p)
            if pv is None:
                return op("pow", conv(b), conv(p))
            if pv < 0:
                inner = conv(b) if pv == -1 else power(conv(b), -pv)
                return op("inv", inner)
            return power(conv(b), pv)
        if isinstance(e, sp.cot):
            u = conv(e.args[0])
            return op("div", op("cos", u), op("sin", u))
        if isinstance(e, sp.sec):
            return op("inv", op("cos", conv(e.args[0])))
        if isinstance(e, sp.csc):
            return op("inv", op("sin", conv(e.args[0])))
        for cls, name in unary.items():
            if isinstance(e, cls):
                return op(name, conv(e.args[0]))
        raise ValueError(f"unsupported expression {type(e).__name__}: {e}")

    return tuple(conv(sp.sympify(e)) for e in exprs)


def parse(text: str) -> System:
    """A system from text in sympy syntax, components separated by ``|``, e.g.
    ``"x_1 | -2.1*x_0"`` (ODEBench's ``substituted`` strings joined with ``|``).

    Raises:
        ValueError: text that sympy cannot parse or that uses unsupported functions/symbols.
    """
    sp = _sympy()
    parts = [p.strip() for p in str(text).split(SEPARATOR)]
    if not all(parts):
        raise ValueError(f"empty component in {text!r}")
    n = max((int(m) for m in re.findall(r"x_(\d+)", text)), default=-1) + 1
    xs, t = _symbols(n)
    local = {f"x_{j}": xs[j] for j in range(n)}
    local.update(t=t, cot=sp.cot, sec=sp.sec, csc=sp.csc, arcsin=sp.asin, arccos=sp.acos,
                 arctan=sp.atan, Abs=sp.Abs, abs=sp.Abs)
    try:
        exprs = [sp.sympify(p, locals=local) for p in parts]
    except (sp.SympifyError, SyntaxError, TypeError) as e:
        raise ValueError(f"cannot parse {text!r}: {e}") from None
    return from_sympy(exprs)


def simplify(system: Sequence[Node], full: bool = False) -> System:
    """Simplify through sympy. ``full=False``: sympy's automatic canonicalisation only (like terms
    collected, constants folded; fast, what the generator uses); ``full=True``: ``sympy.simplify``
    (slow, seconds on large trees)."""
    sp = _sympy()
    exprs = to_sympy(system)
    if full:
        exprs = [sp.simplify(e) for e in exprs]
    return from_sympy(exprs)


# ----------------------------------------------------------------------------- evaluation

def _code(n: Node, scalar: bool = False) -> str:
    """Python source of a node: on columns ``x[:, j]`` (arrays) or on ``x[j]`` (floats)."""
    if n.op == "const":
        return f"({n.value!r})" if math.isfinite(n.value) else "nan"
    if n.op == "t":
        return "t"
    if not n.children:
        return f"x[{int(n.op[2:])}]" if scalar else f"x[:, {int(n.op[2:])}]"
    a = [_code(c, scalar) for c in n.children]
    if n.op in _INFIX:
        return f"({a[0]} {_INFIX[n.op]} {a[1]})"
    return f"{n.op}({', '.join(a)})"


_NP = {"abs": np.abs, "inv": lambda u: 1.0 / u, "sqrt": np.sqrt, "log": np.log, "exp": np.exp,
       "sin": np.sin, "arcsin": np.arcsin, "cos": np.cos, "arccos": np.arccos, "tan": np.tan,
       "arctan": np.arctan, "pow2": lambda u: u * u, "pow3": lambda u: u * u * u,
       "id": lambda u: u, "pow": np.power, "nan": float("nan")}


_MATH = {"abs": abs, "inv": lambda u: 1.0 / u, "sqrt": math.sqrt, "log": math.log, "exp": math.exp,
         "sin": math.sin, "arcsin": math.asin, "cos": math.cos, "arccos": math.acos, "tan": math.tan,
         "arctan": math.atan, "pow2": lambda u: u * u, "pow3": lambda u: u * u * u,
         "id": lambda u: u, "pow": math.pow, "nan": float("nan")}


@functools.lru_cache(maxsize=4096)
def _compiled(system: System, lib: str) -> Callable:
    """``lambda x, t: (component_0, ...)`` for lib ``numpy``/``torch`` (x: (n, dim)) or ``math``
    (x: a list of dim floats; raises ValueError/ZeroDivisionError/OverflowError where numpy
    would give NaN/inf; about 10x faster per call, used by :func:`integrate`)."""
    try:
        return _compile(system, lib)
    except (SyntaxError, RecursionError, MemoryError):  # nesting beyond what Python compiles
        raise ValueError(f"expression too deeply nested to evaluate (more than about {MAX_DEPTH} "
                         "levels)") from None


def _compile(system: System, lib: str) -> Callable:
    if lib == "math":
        src = "lambda x, t: (" + ", ".join(_code(c, scalar=True) for c in system) + ",)"
        return eval(src, dict(_MATH))  # noqa: S307 - source built from validated Node ops and floats
    ns: dict[str, Any] = dict(_NP)
    if lib == "torch":
        import torch

        ns.update(abs=torch.abs, sqrt=torch.sqrt, log=torch.log, exp=torch.exp, sin=torch.sin,
                  arcsin=torch.asin, cos=torch.cos, arccos=torch.acos, tan=torch.tan,
                  arctan=torch.atan, pow=torch.pow)
    src = "lambda x, t: (" + ", ".join(_code(c) for c in system) + ",)"
    return eval(src, ns)  # noqa: S307 - source built from validated Node ops and floats


def _check_dims(system: System, dim: int) -> None:
    if dim != len(system):
        raise ValueError(f"x has {dim} state columns but the system has {len(system)} components")
    used = variables(system)
    if used and max(used) >= dim:
        raise ValueError(f"the system uses x_{max(used)} but the state has only {dim} columns")


def evaluate(system: Sequence[Node], x: np.ndarray, t: np.ndarray | float | None = None) -> np.ndarray:
    """The right-hand side at many states: ``x (n, dim)`` -> ``(n, dim)`` float64, numpy.

    ``t`` (scalar or ``(n,)``) is needed only when the system uses ``t`` (else 0 is used).
    Undefined operations give NaN/inf silently (no warnings, no exceptions).

    Raises:
        ValueError: ``x`` is not 2-D or its columns differ from the number of components.
    """
    system = _as_system(system)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be (n, dim), got shape {x.shape}")
    _check_dims(system, x.shape[1])
    tt = np.zeros(x.shape[0]) if t is None else np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],))
    with np.errstate(all="ignore"):
        cols = _compiled(system, "numpy")(x, tt)
        return np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), (x.shape[0],)) for c in cols], axis=1)


def evaluate_torch(system: Sequence[Node], x, t=None):
    """:func:`evaluate` on a torch tensor ``x (n, dim)`` (keeps dtype/device; differentiable)."""
    import torch

    system = _as_system(system)
    if x.ndim != 2:
        raise ValueError(f"x must be (n, dim), got shape {tuple(x.shape)}")
    _check_dims(system, x.shape[1])
    tt = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if t is None else torch.as_tensor(
        t, dtype=x.dtype, device=x.device).expand(x.shape[0])
    cols = _compiled(system, "torch")(x, tt)
    return torch.stack([torch.as_tensor(c, dtype=x.dtype, device=x.device).expand(x.shape[0])
                        for c in cols], dim=1)


class _Stop(Exception):
    pass


def integrate(system: Sequence[Node], x0: Sequence[float], t: np.ndarray, *, method: str = "LSODA",
              rtol: float = 1e-5, atol: float = 1e-7, first_step: float | None = 1e-6,
              min_step: float = 1e-10, max_abs: float | None = 1e6,
              timeout_s: float | None = None, max_evals: int | None = None) -> np.ndarray:
    """Integrate ``x' = system(x, t)`` from ``x(t[0]) = x0``; returns ``(len(t), dim)``.

    Defaults are the tolerances that made ODEBench's reference trajectories (LSODA, rtol 1e-5,
    atol 1e-7, first_step 1e-6, min_step 1e-10; ``odeformer/odebench/solve_and_plot.py``).
    The generator of the paper uses ``max_abs=100`` (a terminal event) and a 1 s timeout.

    Args:
        x0: initial state ``(dim,)``. t: strictly increasing times ``(n,)``, ``n >= 1``.
        max_abs: stop (terminal event) once any ``|x_j|`` reaches it; None = never.
        timeout_s: stop after this many wall-clock seconds; None = never.
        max_evals: stop after this many right-hand-side evaluations; None = never. Unlike the
            timeout, this stop does not depend on the machine's speed or load (reproducible).

    Returns:
        The states at ``t``; rows at and after a stop (blow-up, timeout, solver failure, NaN in
        the right-hand side) are NaN, so metrics score them as a failed prediction.

    Raises:
        ValueError: bad shapes, non-increasing ``t``, or non-finite ``x0`` (checked before work).
    """
    from scipy.integrate import solve_ivp  # lazily: scipy is the [sci] extra

    system = _as_system(system)
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    _check_dims(system, x0.shape[0])
    if t.size < 1 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError("t must be a non-empty, finite, strictly increasing time grid")
    if not np.all(np.isfinite(x0)):
        raise ValueError(f"x0 must be finite, got {x0.tolist()}")
    out = np.full((t.size, x0.size), np.nan)
    out[0] = x0
    if t.size == 1:
        return out
    fn = _compiled(system, "math")
    deadline = None if timeout_s is None else time.perf_counter() + timeout_s
    evals = [0]

    def rhs(tt, y):
        if deadline is not None and time.perf_counter() > deadline:
            raise _Stop("timeout")
        evals[0] += 1
        if max_evals is not None and evals[0] > max_evals:
            raise _Stop("evaluation budget")
        try:
            d = np.array(fn(y.tolist(), float(tt)), dtype=np.float64)
        except (ValueError, ZeroDivisionError, OverflowError, TypeError):
            raise _Stop("undefined derivative") from None
        if not np.all(np.isfinite(d)):
            raise _Stop("non-finite derivative")
        return d

    events = None
    if max_abs is not None:
        def blowup(tt, y):
            return max_abs - np.max(np.abs(y))
        blowup.terminal = True
        events = [blowup]
    kw: dict[str, Any] = dict(method=method, t_eval=t, rtol=rtol, atol=atol, events=events)
    if method == "LSODA":
        kw.update(min_step=min_step)
    if first_step is not None:
        kw.update(first_step=first_step)
    try:
        # a state running off to ~1e154 overflows the solver's error norm (x.dot(x)) before the
        # blow-up event fires; that trajectory ends in NaN rows like any other stop, so numpy's
        # overflow warning would only repeat what the NaN rows say
        with np.errstate(over="ignore", invalid="ignore"):
            sol = solve_ivp(rhs, (t[0], t[-1]), x0, **kw)
    except (_Stop, ValueError, OverflowError, ZeroDivisionError, FloatingPointError):
        return out
    y = sol.y.T  # fewer rows than t when a terminal event or a solver failure stopped it
    out[: y.shape[0]] = y
    if sol.status == -1:  # the solver failed: distrust the last row too
        out[max(y.shape[0] - 1, 1):] = np.nan
    return out
