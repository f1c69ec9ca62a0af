"""FLOPs and buffer sizes from a compiled XLA module, with loops counted by their trip counts.

XLA's ``compiled.cost_analysis()['flops']`` counts the body of a ``while`` loop (``lax.scan``, ``lax.map``) once,
whatever its trip count. The ops are built on such loops (the chunk-wise state pass is a scan over chunks, the dense
read a map over query blocks), so the raw number undercounts the work by up to the trip count. This module walks the
optimised HLO text, counts FLOPs per instruction the way XLA's ``HloCostAnalysis`` does (a ``dot`` is
``2 * out * contracted``, an elementwise arithmetic op one per output element, a reduction one per input element,
transcendentals separately) and multiplies a loop body by its ``known_trip_count``. With every trip count set to 1
it reproduces XLA's raw number closely; that is reported as a self-check (``flops_no_trips`` vs XLA's ``flops``).

It also reports the largest buffer the module materialises (outside fusions), to check that no ``T x T`` array
per head appears.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_SHAPE = re.compile(
    r"\b(pred|s4|s8|s16|s32|s64|u4|u8|u16|u32|u64|f8e4m3fn|f8e5m2|bf16|f16|f32|f64|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s4": 1, "s8": 1, "s16": 2, "s32": 4, "s64": 8, "u4": 1, "u8": 1, "u16": 2, "u32": 4, "u64": 8,
          "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16}
_COMP_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*(\(.*\))?\s*->.*\{\s*$")
_NAME = re.compile(r"%([\w.\-]+)")

# XLA HloCostAnalysis: these elementwise ops count as transcendentals, the others as flops.
_TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic", "sqrt", "rsqrt",
                   "cbrt", "sine", "cosine", "tan", "erf", "atan2", "power"}
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "compare", "select",
                "and", "or", "not", "xor", "clamp", "remainder", "sign", "floor", "ceil", "round-nearest-even",
                "round-nearest-afz", "convert", "is-finite", "shift-left", "shift-right-logical",
                "shift-right-arithmetic", "popcnt", "count-leading-zeros", "real", "imag", "complex",
                "stochastic-convert"} | _TRANSCENDENTAL
_REDUCERS = {"reduce", "reduce-window", "scatter", "select-and-scatter", "all-reduce", "reduce-scatter"}


def _shape_of(type_text: str) -> tuple[str, tuple[int, ...]] | None:
    m = _SHAPE.search(type_text)
    if not m:
        return None
    dims = tuple(int(d) for d in m.group(2).split(",") if d)
    return m.group(1), dims


def _elements(dims) -> int:
    return math.prod(dims) if dims else 1


@dataclass
class _Instr:
    name: str
    type_text: str
    opcode: str
    operands: list[str]
    attrs: str


@dataclass
class _Comp:
    name: str
    instrs: list[_Instr] = field(default_factory=list)
    shapes: dict = field(default_factory=dict)


def _split_instruction(line: str) -> _Instr | None:
    line = line.strip()
    if line.startswith("ROOT "):
        line = line[5:]
    if not line.startswith("%") or " = " not in line:
        return None
    name, rest = line.split(" = ", 1)
    rest = rest.strip()
    if rest.startswith("("):  # tuple type
        depth = 0
        for i, ch in enumerate(rest):  # noqa: B007 (i is used after the loop)
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        type_text, rest = rest[: i + 1], rest[i + 1:].strip()
    else:
        type_text, _, rest = rest.partition(" ")
    opcode, _, tail = rest.partition("(")
    depth, i = 1, 0
    for i, ch in enumerate(tail):  # noqa: B007 (i is used after the loop)
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            break
    operand_text, attrs = tail[:i], tail[i + 1:]
    return _Instr(name[1:], type_text, opcode.strip(), _NAME.findall(operand_text), attrs)


def parse_hlo(text: str) -> tuple[dict[str, _Comp], str | None]:
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _COMP_HEADER.match(line.strip())
            if m:
                current = _Comp(m.group(2))
                comps[current.name] = current
                if m.group(1):
                    entry = current.name
            continue
        if line.strip() == "}":
            current = None
            continue
        ins = _split_instruction(line)
        if ins is not None:
            current.instrs.append(ins)
            current.shapes[ins.name] = ins.type_text
    return comps, entry


def _attr_comp(attrs: str, key: str) -> str | None:
    m = re.search(key + r"=%([\w.\-]+)", attrs)
    return m.group(1) if m else None


def _trip_count(attrs: str) -> int | None:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', attrs)
    return int(m.group(1)) if m else None


@dataclass
class Cost:
    flops: float = 0.0  # loop-corrected (body x trip count)
    flops_no_trips: float = 0.0  # every loop body counted once (what XLA's cost analysis reports)
    dot_flops: float = 0.0  # loop-corrected, dot / convolution only
    transcendentals: float = 0.0  # loop-corrected
    unknown_trip_loops: int = 0

    def add(self, other: "Cost", times: float = 1.0, times_no_trips: float = 1.0):
        self.flops += other.flops * times
        self.flops_no_trips += other.flops_no_trips * times_no_trips
        self.dot_flops += other.dot_flops * times
        self.transcendentals += other.transcendentals * times
        self.unknown_trip_loops += other.unknown_trip_loops


class HloCost:
    """Loop-aware FLOP count and buffer census of an optimised HLO module (``compiled.as_text()``)."""

    def __init__(self, text: str):
        self.comps, self.entry = parse_hlo(text)
        self._memo: dict[str, Cost] = {}
        self.fused = set()  # computations whose instructions are not materialised
        for comp in self.comps.values():
            for ins in comp.instrs:
                if ins.opcode == "fusion":
                    called = _attr_comp(ins.attrs, "calls")
                    if called:
                        self.fused.add(called)
                elif ins.opcode in _REDUCERS or ins.opcode in ("sort", "map"):
                    called = _attr_comp(ins.attrs, "to_apply")
                    if called:
                        self.fused.add(called)

    def cost(self, comp_name: str | None = None) -> Cost:
        comp_name = comp_name or self.entry
        if comp_name in self._memo:
            return self._memo[comp_name]
        comp = self.comps[comp_name]
        total = Cost()
        for ins in comp.instrs:
            op = ins.opcode
            shape = _shape_of(ins.type_text)
            out = _elements(shape[1]) if shape else 0
            if op == "dot":
                lhs = _shape_of(comp.shapes.get(ins.operands[0], "")) if ins.operands else None
                m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
                contracted = 1
                if lhs and m and m.group(1):
                    contracted = math.prod(lhs[1][int(d)] for d in m.group(1).split(","))
                f = 2.0 * out * contracted
                total.add(Cost(f, f, f))
            elif op == "convolution":
                rhs = _shape_of(comp.shapes.get(ins.operands[1], "")) if len(ins.operands) > 1 else None
                kernel = _elements(rhs[1]) // max(1, rhs[1][-1]) if rhs else 1  # rough: out * kernel window * in
                f = 2.0 * out * kernel
                total.add(Cost(f, f, f))
            elif op in _ELEMENTWISE:
                if op in _TRANSCENDENTAL:
                    total.transcendentals += out
                else:
                    total.add(Cost(out, out))
            elif op in _REDUCERS:
                inp = _shape_of(comp.shapes.get(ins.operands[0], "")) if ins.operands else None
                n = _elements(inp[1]) if inp else out
                total.add(Cost(n, n))
            elif op == "fusion" or op == "call" or op == "async-start":
                called = _attr_comp(ins.attrs, "calls") or _attr_comp(ins.attrs, "to_apply")
                if called in self.comps:
                    total.add(self.cost(called))
            elif op == "while":
                body, cond = _attr_comp(ins.attrs, "body"), _attr_comp(ins.attrs, "condition")
                trips = _trip_count(ins.attrs)
                if trips is None:
                    trips = 1
                    total.unknown_trip_loops += 1
                if body in self.comps:
                    total.add(self.cost(body), times=trips, times_no_trips=1)
                if cond in self.comps:
                    total.add(self.cost(cond), times=trips + 1, times_no_trips=1)
            elif op == "conditional":
                if "branch_computations" in ins.attrs:
                    names = _NAME.findall(ins.attrs.split("branch_computations=", 1)[1].split("}")[0])
                else:
                    names = [c for c in (_attr_comp(ins.attrs, "true_computation"),
                                         _attr_comp(ins.attrs, "false_computation")) if c]
                branch = [self.cost(n) for n in names if n in self.comps]
                if branch:
                    total.add(max(branch, key=lambda c: c.flops))
        self._memo[comp_name] = total
        return total

    def _materialised(self):
        """``(dtype, dims text, dims, instruction)`` of every array produced outside fusion bodies."""
        for comp in self.comps.values():
            if comp.name in self.fused:
                continue
            for ins in comp.instrs:
                if ins.opcode in ("parameter", "get-tuple-element", "tuple", "bitcast", "constant"):
                    continue
                for m in _SHAPE.finditer(ins.type_text):
                    yield m.group(1), m.group(2), tuple(int(d) for d in m.group(2).split(",") if d), ins.name

    def largest_buffer(self) -> tuple[int, str, str]:
        """``(bytes, shape text, instruction)`` of the largest array produced outside fusion bodies."""
        return (self.largest_buffers(1) or [(0, "", "")])[0]

    def largest_buffers(self, count: int) -> list[tuple[int, str, str]]:
        """The ``count`` largest arrays produced outside fusion bodies, ``(bytes, shape text, instruction)``,
        largest first."""
        found = [(_elements(dims) * _BYTES[dtype], f"{dtype}[{text}]", name)
                 for dtype, text, dims, name in self._materialised()]
        return sorted(found, key=lambda x: -x[0])[:count]

    def loops(self) -> list[dict]:
        """Every ``while`` loop: ``trips`` (``known_trip_count``), the FLOPs and dot FLOPs of one body, and the shape
        of its carried tuple."""
        out = []
        for comp in self.comps.values():
            for ins in comp.instrs:
                if ins.opcode == "while":
                    body = self.cost(_attr_comp(ins.attrs, "body"))
                    out.append(dict(trips=_trip_count(ins.attrs), body_flops=body.flops, body_dot_flops=body.dot_flops,
                                    carried=ins.type_text))
        return out

    def copies(self) -> tuple[int, int]:
        """``(count, bytes)`` of the copies and transposes outside fusion bodies (plain, or fusions XLA named after
        them): layout changes, no arithmetic."""
        count = nbytes = 0
        for comp in self.comps.values():
            if comp.name in self.fused:
                continue
            for ins in comp.instrs:
                named = ins.opcode == "fusion" and ("copy" in ins.name or "transpose" in ins.name)
                shape = _shape_of(ins.type_text)
                if shape and (ins.opcode in ("copy", "transpose") or named):
                    count, nbytes = count + 1, nbytes + _elements(shape[1]) * _BYTES[shape[0]]
        return count, nbytes

    def square_arrays(self, t: int, heads: int) -> list[str]:
        """Materialised arrays at least as large as one ``T x T`` array per head (``>= heads * t * t`` elements).

        XLA merges and reorders axes, so the test is on size, not on axis names: a ``[h, T, m * dv]`` read block
        with ``m * dv = T`` (e.g. ``C = dv``) counts, as it costs exactly what a ``T x T`` score matrix would.
        """
        return sorted({f"{dtype}[{text}]" for dtype, text, dims, _ in self._materialised()
                       if _elements(dims) >= heads * t * t})


def xla_flops(compiled) -> float | None:
    """``flops`` of ``compiled.cost_analysis()`` (a dict, or a list of dicts in older jax)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    if not ca:
        return None
    value = ca.get("flops")
    return None if value is None else float(value)


def memory_bytes(compiled) -> dict[str, int] | None:
    """Argument / output / temp / alias bytes of ``compiled.memory_analysis()`` and their peak estimate."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if ma is None:
        return None
    if isinstance(ma, (list, tuple)):
        ma = ma[0]
    get = lambda name: int(getattr(ma, name, 0) or 0)
    out = {
        "argument_bytes": get("argument_size_in_bytes"),
        "output_bytes": get("output_size_in_bytes"),
        "temp_bytes": get("temp_size_in_bytes"),
        "alias_bytes": get("alias_size_in_bytes"),
    }
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
    return out
