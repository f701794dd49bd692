"""One speed model: the whole network's predicted latency and speed-up for a solution, from its table.

Every speed-up the product shows comes from :func:`predict_speed` (DESIGN.md, "Numbers shown to
users"): the CLI (``bench``, ``frontier``), the measure and frontier workflows, the benchmarks, and
the app through :func:`core.benchmark.predicted_speedup`. With N the measured original network
(BN folded, timed with the table's own settings: ``network_folded_latency_ms`` in meta.json) and
T the latency table::

    predicted_ms = N + s · ( Σ T(solution segments the original does not have)
                           - Σ T(original segments the solution replaces)
                           + Δ structure )
    speed-up     = N / predicted_ms

Δ structure is what the merge changes outside the table's entries, each cost measured at profile
time (:class:`StructureCost`, listed by the model's family) inside the BN-folded original where
the original runs it (its steps, timed in a real forward pass), alone at its true shape where it
does not. Inside, because a small memory-bound op (an activation, an add, the pooling head) costs
1.5-3x in the network what it costs alone on a hot cache; timed alone, the most compressed
networks, made mostly of such ops, were over-predicted by 15-30% (BENCHMARKS.md, "Speed model,
part by part"):

- ``residual``: a residual add (with its 1x1 or zero-pad shortcut) runs unless a segment absorbs
  its whole block into the merged kernel (LAYERMERGE.md §5.3 step 5): absorbed adds are
  subtracted;
- ``activation``: every table entry is timed as conv + activation (LAYERMERGE.md §3.1), but the
  network runs an activation at a segment's end only where the activation plan puts one
  (``core.surgery.activation_plan``): a linear bottleneck output, or an inner end of a Kim23
  split, runs none; a removed conv whose activation stays runs one that no entry timed;
- ``fixed``: costs no solution changes (stem, pooling, classifier). They cancel in the
  prediction, and only serve the keep-everything check of :func:`table_reliability`.

s, the overhead scale, is what the measured network says about the parts the table does not
see. The keep-everything table plus the structure costs (E, :func:`explained_network_ms`) falls
short of N: on MobileNetV2 at batch 64 by 17%, on ResNet by 4%. Measured along the shipped
frontiers, that remainder is not a fixed cost: it shrinks with the layers (the most compressed
digits_mobilenet network measured 7.35x where a fixed remainder predicts 3.65x), like memory
traffic between layers that an entry timed alone on a hot cache never pays. So it is spread over
everything a solution can change, in proportion to its time: with F the fixed costs (stem,
pooling, classifier), s = (N - F) / (E - F), 1 when the table predates structure costs.
(BENCHMARKS.md, "Speed model", shows the two models against measurement.)

So the keep-everything solution is predicted at exactly N (1.0x), and nothing here depends on
which family the model is: the family lists its structure costs (``ModelFamily.structure_costs``)
and this module evaluates them from meta.json and the solution alone. Tables written before the
profiling protocol (no folded network, no structure costs) fall back to the table sums, and say so
in ``basis``; :func:`table_warning` gives the one line a tool shows for an unreliable table.

This module imports no torch: ``solve`` and the app's slider use it on every move.

Example:
    >>> meta = read_meta("cached_tables/digits_resnet")  # doctest: +SKIP
    >>> predict_speed(meta, solution).speedup  # doctest: +SKIP
    1.42
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.solution import Solution

__all__ = [
    "PROTOCOL_VERSION",
    "STRUCTURE_KINDS",
    "ADDITIVITY_TOLERANCE",
    "OVERHEAD_SCALE_BOUNDS",
    "StructureCost",
    "SpeedPrediction",
    "Reliability",
    "predict_speed",
    "speedup_from_totals",
    "explained_network_ms",
    "overhead_scale",
    "planned_activations",
    "running_residuals",
    "table_reliability",
    "table_warning",
]

PROTOCOL_VERSION = 2  # meta.json's latency_protocol.version when the table follows this protocol
STRUCTURE_KINDS = ("fixed", "residual", "activation")
# The keep-everything check: the table's segments plus the measured structure should add up to
# the measured network; beyond this relative gap the table (or the machine) is not to be trusted.
ADDITIVITY_TOLERANCE = 0.2
# s outside these says the table and the measured network do not describe one machine state.
OVERHEAD_SCALE_BOUNDS = (0.5, 2.0)
_KEY_FIELDS = 5  # start, end, kernel, depthwise, stride

SegmentKey = tuple[int, int, int, bool, int]


@dataclass(frozen=True)
class StructureCost:
    """A cost of the network outside the table's entries, timed at profile time.

    Args:
        name: stable and readable (``residual 3-5``, ``activation 4``, ``stem``).
        kind: one of :data:`STRUCTURE_KINDS` (see the module docstring).
        geometry: JSON-able; what :func:`core.latency.structure_module` builds and times (the
            timing's cache key: equal geometries are timed once). Not written to meta.json.
        start, end: a residual block's span (its convs are (start, end]).
        position: where an activation sits (after conv ``position``).
        original: the activation the original network runs at ``position`` (None: linear).
        default: the activation a merged segment ending at a linear ``position`` gets (the
            chain's default; None when the model has none).
        steps: the labels (``core.network.step_label``) of the speed baseline's steps that run
            this cost inside the original network, when it runs it there (empty: it does not,
            e.g. an activation at a linear position). The profiler times the cost there, where
            it really costs what it costs: a small memory-bound op (an activation, an add, a
            pooling) timed alone on a hot cache costs half of what it costs in the network
            (BENCHMARKS.md, "Speed model, part by part").
    """

    name: str
    kind: str
    geometry: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    start: int | None = None
    end: int | None = None
    position: int | None = None
    original: str | None = None
    default: str | None = None
    steps: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURE_KINDS:
            raise ValueError(f"structure kind must be one of {STRUCTURE_KINDS}, got {self.kind!r}")

    def to_meta(self, latency_ms: float, **timing: Any) -> dict[str, Any]:
        """The meta.json record: the fields the speed model reads, the cost it uses, and
        ``timing`` (how it was timed: ``timed``, ``alone_ms``; for the reader, not the model)."""
        data = {
            k: list(v) if k == "steps" else v
            for k, v in asdict(self).items()
            if k != "geometry" and v is not None and v != ()
        }
        return {**data, "latency_ms": float(latency_ms), **timing}


@dataclass(frozen=True)
class SpeedPrediction:
    """What the speed model predicts for one solution, with the parts it added up.

    ``basis`` says what the prediction stands on: ``folded network`` (the protocol's measured
    original, BN folded), ``unfolded network`` (an older table: the original timed with BN
    unfolded, no structure costs) or ``table`` (no network measured: the plain ratio of table
    sums). ``complete`` is True when structure costs were measured.
    """

    speedup: float
    network_ms: float | None  # the measured original (N)
    predicted_ms: float | None  # the predicted merged network
    table_ms: float  # the solution's table latency (Σ over its segments)
    original_table_ms: float  # the keep-everything table latency
    table_change_ms: float  # Σ T(solution-only segments) - Σ T(original-only segments)
    residual_change_ms: float  # + adds the solution keeps that the original does not - absorbed
    activation_change_ms: float  # activations run but not timed - timed but not run, vs original
    overhead_scale: float  # s: the changes above count s times (the unexplained remainder)
    basis: str
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reliability:
    """How far a latency table can be trusted, and why not (one reason per problem)."""

    reliable: bool
    reasons: tuple[str, ...]
    protocol: bool  # measured under the noise-checked protocol
    contention_seen: bool  # slow phases were seen (and re-measured) while profiling
    unexplained: float | None  # (N - explained keep-everything) / N, when the family's is complete


def predict_speed(meta: Mapping[str, Any], solution: Solution) -> SpeedPrediction:
    """The whole network's predicted latency and speed-up for ``solution`` (module docstring).

    Args:
        meta: the table directory's meta.json (as :func:`core.tables.read_meta` returns it).
        solution: a solution of these tables (its segments carry their table latencies).

    Returns:
        The prediction; ``speedup`` is NaN when the solution's predicted latency is not positive.
    """
    original_table = _float(meta.get("original_table_latency_ms")) or 0.0
    originals = _original_segments(meta)
    if originals is not None:
        table_change = _table_change(originals, solution)
    else:  # an older table: only the sums are known
        table_change = solution.latency_ms - original_table
    costs = _structure_costs(meta)
    folded = _float(meta.get("network_folded_latency_ms"))
    unfolded = _float(meta.get("network_latency_ms"))
    residual_change = activation_change = 0.0
    scale = 1.0
    if folded is not None and folded > 0:
        network, basis = folded, "folded network"
        residual_change = _residual_change(costs, solution)
        activation_change = _activation_change(costs, solution, meta)
        scale = overhead_scale(meta)
    elif unfolded is not None and unfolded > 0:
        network, basis = unfolded, "unfolded network"
    else:
        speedup = _ratio(original_table, solution.latency_ms)
        return SpeedPrediction(
            speedup=speedup,
            network_ms=None,
            predicted_ms=None,
            table_ms=solution.latency_ms,
            original_table_ms=original_table,
            table_change_ms=table_change,
            residual_change_ms=0.0,
            activation_change_ms=0.0,
            overhead_scale=1.0,
            basis="table",
            complete=False,
        )
    predicted = network + scale * (table_change + residual_change + activation_change)
    return SpeedPrediction(
        speedup=_ratio(network, predicted),
        network_ms=network,
        predicted_ms=predicted,
        table_ms=solution.latency_ms,
        original_table_ms=original_table,
        table_change_ms=table_change,
        residual_change_ms=residual_change,
        activation_change_ms=activation_change,
        overhead_scale=scale,
        basis=basis,
        complete=bool(costs) and basis == "folded network",
    )


def speedup_from_totals(
    solution_table_ms: float,
    original_table_ms: float,
    network_ms: float | None,
    scale: float = 1.0,
) -> float:
    """The speed model when only sums are known: N / (N + s·(T(solution) - T(original))).

    Without a measured network, the ratio of table sums. This is the model with no structure
    change, for callers that hold a table latency but no solution (a budget line on a chart);
    ``scale`` is the tables' :func:`overhead_scale`.
    """
    if solution_table_ms <= 0 or original_table_ms <= 0:
        return math.nan
    if network_ms is None or not network_ms > 0:
        return original_table_ms / solution_table_ms
    return _ratio(network_ms, network_ms + scale * (solution_table_ms - original_table_ms))


def planned_activations(meta: Mapping[str, Any], solution: Solution) -> frozenset[int]:
    """The positions where the merged network of ``solution`` runs an activation, as the speed
    model sees them (``core.surgery.activation_plan``'s rule, from meta.json's structure costs;
    empty when the table records no activation costs)."""
    costs = [(c, latency) for c, latency in _structure_costs(meta) if c.kind == "activation"]
    return frozenset(_runs(costs, solution.kept_activations))


def running_residuals(meta: Mapping[str, Any], solution: Solution) -> tuple[tuple[int, int], ...]:
    """The residual blocks whose add (and shortcut) the merged network of ``solution`` still
    runs, as the speed model sees them: those no segment absorbs (``core.merge``'s rule)."""
    boundaries = set(solution.boundaries)
    return tuple(
        (c.start, c.end)  # type: ignore[misc]
        for c, _ in _structure_costs(meta)
        if c.kind == "residual" and _residual_runs(c, boundaries)
    )


def overhead_scale(meta: Mapping[str, Any]) -> float:
    """s = (N - F) / (E - F): how much the network really spends per ms of table time (module
    docstring). 1.0 when the table has no folded network or no complete structure costs, or when
    s falls outside :data:`OVERHEAD_SCALE_BOUNDS` (a broken table, not overhead to scale by).

    A table whose keep-everything check fails (beyond :data:`ADDITIVITY_TOLERANCE`) is still
    scaled, and warned about: the MobileNetV2 demo's remainder measured 17% on one run and 23% on
    a quiet one, and the frontier's measurements follow the scaled model in both
    (BENCHMARKS.md, "Speed model")."""
    network = _float(meta.get("network_folded_latency_ms"))
    explained = explained_network_ms(meta)
    if network is None or explained is None:
        return 1.0
    fixed = sum(latency for cost, latency in _structure_costs(meta) if cost.kind == "fixed")
    variable = explained - fixed
    if variable <= 0 or network - fixed <= 0:
        return 1.0
    scale = (network - fixed) / variable
    low, high = OVERHEAD_SCALE_BOUNDS
    return scale if low <= scale <= high else 1.0


def explained_network_ms(meta: Mapping[str, Any]) -> float | None:
    """What the table and the structure costs say the original network takes.

    Σ T(keep-everything segments) + the residual adds it runs + the activations it runs but the
    table does not time (negative: linear positions) + the fixed costs. None when the family's
    structure costs are not complete (``structure_complete``) or the table predates them.
    """
    originals = _original_segments(meta)
    costs = _structure_costs(meta)
    if originals is None or not costs or not meta.get("structure_complete"):
        return None
    total = sum(latency for _, latency in originals)
    ends = {key[1] for key, _ in originals}
    for cost, latency in costs:
        if cost.kind == "fixed":
            total += latency
        elif cost.kind == "residual" and _residual_runs(cost, ends):
            total += latency
    total += _activation_extra(costs, _segments_of_original(originals), _all_positions(originals))
    return total


def table_reliability(meta: Mapping[str, Any]) -> Reliability:
    """Whether the latency table in ``meta`` can be trusted for speed predictions.

    Unreliable when (1) it was measured before the noise-checked protocol; (2) timings stayed
    slow after re-measuring (another job kept the machine busy: the reference op ran slower
    than its quiet time); or (3) the keep-everything table sum with the structure costs and the
    measured network disagree by more than :data:`ADDITIVITY_TOLERANCE`.
    """
    reasons: list[str] = []
    protocol = (meta.get("latency_protocol") or {}).get("version") == PROTOCOL_VERSION
    noise = meta.get("latency_noise") or {}
    if not protocol:
        reasons.append(
            "it was measured before the noise-checked profiling protocol (no contention "
            "check; its network was timed with BN unfolded)"
        )
    unresolved = int(noise.get("unresolved") or 0)
    if unresolved:
        ratio = _float(noise.get("reference_max_ratio"))
        how = f"; the reference op ran up to {ratio:.1f}x its quiet time" if ratio else ""
        reasons.append(
            f"{unresolved} of its {noise.get('timed', '?')} timings stayed slow after "
            f"re-measuring (another job was using the CPU{how})"
        )
    unexplained = None
    explained = explained_network_ms(meta)
    network = _float(meta.get("network_folded_latency_ms"))
    if explained is not None and network:
        unexplained = (network - explained) / network
        if abs(unexplained) > ADDITIVITY_TOLERANCE:
            reasons.append(
                f"its keep-everything sum with the structure costs ({explained:.4g} ms) and the "
                f"measured network ({network:.4g} ms) disagree by {-unexplained:+.0%}, more than "
                f"the {ADDITIVITY_TOLERANCE:.0%} the structure leaves unexplained"
            )
    return Reliability(
        reliable=not reasons,
        reasons=tuple(reasons),
        protocol=protocol,
        contention_seen=bool(noise.get("contention_seen")),
        unexplained=unexplained,
    )


def table_warning(meta: Mapping[str, Any], where: str | None = None) -> str | None:
    """One line saying why the latency table is unreliable, or None when it is not.

    What ``profile``, ``solve``, ``frontier`` and the app show. ``where`` names the table
    (its directory) in the line.
    """
    reliability = table_reliability(meta)
    if reliability.reliable:
        return None
    name = f"latency table {where}" if where else "this latency table"
    return (
        f"warning: {name} is unreliable for speed predictions: {'; '.join(reliability.reasons)}. "
        "Re-profile it (python -m core profile, one thread) on a quieter machine."
    )


# --------------------------------------------------------------------------- private helpers


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 and numerator > 0 else math.nan


def _original_segments(meta: Mapping[str, Any]) -> list[tuple[SegmentKey, float]] | None:
    """The keep-everything segments with their table latencies, as meta.json records them."""
    rows = meta.get("original_segments")
    if not isinstance(rows, list) or not rows:
        return None
    segments = []
    for row in rows:
        if not isinstance(row, list | tuple) or len(row) != _KEY_FIELDS + 1:
            return None
        start, end, kernel, depthwise, stride, latency = row
        segments.append(
            ((int(start), int(end), int(kernel), bool(depthwise), int(stride)), latency)
        )
    return [(key, float(latency)) for key, latency in segments]


def _structure_costs(meta: Mapping[str, Any]) -> list[tuple[StructureCost, float]]:
    names = {f.name for f in fields(StructureCost)}
    costs = []
    for row in meta.get("structure_costs") or ():
        known = {k: v for k, v in row.items() if k in names}
        if "steps" in known:
            known["steps"] = tuple(known["steps"])
        costs.append((StructureCost(**known), float(row["latency_ms"])))
    return costs


def _table_change(originals: Sequence[tuple[SegmentKey, float]], solution: Solution) -> float:
    """Σ T over solution-only segments minus Σ T over original-only ones (0.0 when equal)."""
    original = dict(originals)
    chosen = {s.key: s.latency_ms for s in solution.segments}
    added = sum(latency for key, latency in chosen.items() if key not in original)
    removed = sum(latency for key, latency in original.items() if key not in chosen)
    return added - removed


def _residual_runs(cost: StructureCost, boundaries: Iterable[int]) -> bool:
    """A residual add runs unless no boundary lies strictly inside its block (core.merge)."""
    return any(cost.start < b < cost.end for b in boundaries)  # type: ignore[operator]


def _residual_change(costs: Sequence[tuple[StructureCost, float]], solution: Solution) -> float:
    boundaries = set(solution.boundaries)
    change = 0.0
    for cost, latency in costs:
        if cost.kind != "residual":
            continue
        original = cost.end - cost.start > 1  # type: ignore[operator]  # every position a boundary
        now = _residual_runs(cost, boundaries)
        change += latency * (int(now) - int(original))
    return change


def _segments_of_original(originals: Sequence[tuple[SegmentKey, float]]) -> list[tuple[int, int]]:
    return [(key[1], key[2]) for key, _ in originals]  # (end, kernel)


def _all_positions(originals: Sequence[tuple[SegmentKey, float]]) -> list[int]:
    return sorted({0, *(key[1] for key, _ in originals)})


def _activation_change(
    costs: Sequence[tuple[StructureCost, float]], solution: Solution, meta: Mapping[str, Any]
) -> float:
    originals = _original_segments(meta)
    if originals is None:
        return 0.0
    now = _activation_extra(
        costs, [(s.end, s.kernel) for s in solution.segments], solution.kept_activations
    )
    before = _activation_extra(costs, _segments_of_original(originals), _all_positions(originals))
    return now - before


def _activation_extra(
    costs: Sequence[tuple[StructureCost, float]],
    segments: Sequence[tuple[int, int]],
    kept_activations: Iterable[int],
) -> float:
    """Σ over segment ends: cost × (the network runs an activation there - the entry timed one).

    An entry with a kernel is timed as conv + activation; a removal (kernel 0) as nothing. The
    network's activation plan is ``core.surgery.activation_plan``'s rule, from the costs' data.
    """
    by_position = {c.position: (c, latency) for c, latency in costs if c.kind == "activation"}
    if not by_position:
        return 0.0
    runs = _runs(list(by_position.values()), kept_activations)
    extra = 0.0
    for end, kernel in segments:
        cost = by_position.get(end)
        if cost is not None:
            extra += cost[1] * (int(end in runs) - int(kernel > 0))
    return extra


def _runs(
    activation_costs: Sequence[tuple[StructureCost, float]], kept_activations: Iterable[int]
) -> set[int]:
    """Where the network runs an activation: a kept boundary with an original activation, or a
    linear one that ends a span longer than one position (gets the default; LAYERMERGE.md §1.2)."""
    by_position = {c.position: c for c, _ in activation_costs}
    runs: set[int] = set()
    previous = 0
    for position in sorted(set(kept_activations)):
        cost = by_position.get(position)
        if cost is not None and (
            cost.original is not None or (position - previous > 1 and cost.default is not None)
        ):
            runs.add(position)
        previous = position
    return runs
