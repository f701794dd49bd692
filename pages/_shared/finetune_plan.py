"""Before a finetune starts: how many steps to run, and how long they will take on this machine.

The recommendation is the recipe the demo benchmarks used (BENCHMARKS.md), scaled to the chosen
solution; the duration is a prediction from a few real training steps timed here (the same code
as the job, on the same model and batch), cached per model, solution and batch. When even that
timing would keep the page waiting (a big model), it waits for a click.

Whether to run a control (the original finetuned with the same recipe, ``core.workflows.control``)
is decided here too: it can double the duration, unless the same control ran before.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import streamlit as st

from core.chain import Chain
from core.solution import Solution
from pages._shared import caches, state
from pages._shared.jobs_finetune import EVALUATIONS
from pages._shared.numbers import count, duration
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import TablesInUse

__all__ = [
    "Recommendation",
    "Pace",
    "classifier_recommendation",
    "unet_recommendation",
    "step_seconds",
    "time_steps",
    "duration_note",
    "control_checkbox",
    "recommended_row",
]

CLASSIFIER_EPOCHS = 2  # the demo frontier's recipe: 2 epochs, SGD lr 0.02, batch 64
UNET_STEPS = 600  # the UNet benchmark's recipe: 600 Adam steps, lr 4e-4, batch 64
DEEP_CUT = 0.5  # below this share of the original latency, twice the recipe
TIMED_STEPS = 10  # steps run to time a finetune: WARM_STEPS of warm-up, then the steady pace
WARM_STEPS = 5  # the first steps are slower (allocations, kernel selection): timed apart
AUTO_TIMING_S = 4.0  # time a few steps without asking when that should take less than this


@dataclass(frozen=True)
class Recommendation:
    steps: int
    reason: str  # one sentence: where the number comes from


def classifier_recommendation(
    solution: Solution, chain: Chain, used: TablesInUse | None, *, images: int, batch: int
) -> Recommendation:
    """Steps for a classifier: the benchmarks' 2 epochs, doubled for deep cuts, none for no cut."""
    if _changes_nothing(solution, chain):
        return Recommendation(0, "this solution removes and prunes nothing: nothing to recover")
    epochs = CLASSIFIER_EPOCHS * (2 if _share(solution, used) < DEEP_CUT else 1)
    steps = epochs * math.ceil(images / batch)
    reason = (
        f"{epochs} epochs of the {count(images)} finetune images at batch {batch}: the demo "
        "benchmarks' recipe, which brought the 60–85% budgets back to within about 2 points of "
        "the original (BENCHMARKS.md)"
    )
    if epochs > CLASSIFIER_EPOCHS:
        reason += "; doubled because this cut is deep (under half the latency), a starting guess"
    return Recommendation(steps, reason)


def unet_recommendation(solution: Solution, chain: Chain) -> Recommendation:
    """Steps for a UNet: the UNet benchmarks' 600 Adam steps, none when nothing is cut."""
    if _changes_nothing(solution, chain):
        return Recommendation(0, "this solution removes and prunes nothing: nothing to recover")
    return Recommendation(
        UNET_STEPS,
        "the UNet benchmarks' recipe (600 Adam steps, lr 4e-4, batch 64), which brought the "
        "85% budget's holdout ε-loss from 81 back to 6.8, near the original's 6.5 (BENCHMARKS.md)",
    )


@dataclass(frozen=True)
class Pace:
    """A finetune timed here: its first WARM_STEPS steps in all, then seconds per later step."""

    warm_s: float
    step_s: float
    evaluation_s: float = 0.0  # one interim test evaluation (a classifier job runs EVALUATIONS)

    def seconds(self, steps: int) -> float:
        """The predicted duration of ``steps`` steps, with the job's interim evaluations."""
        tests = EVALUATIONS * self.evaluation_s
        if steps <= WARM_STEPS:
            return self.warm_s * steps / WARM_STEPS + tests
        return self.warm_s + (steps - WARM_STEPS) * self.step_s + tests


def step_seconds(solution: Solution, used: TablesInUse | None, *, batch: int) -> Pace | None:
    """How fast a finetune of ``solution`` at ``batch`` runs on this machine, timed (cached).

    :func:`time_steps` (the same for every family) runs TIMED_STEPS real steps in the script
    thread when that is predicted to be short (from the measured network time in the tables);
    otherwise only after the user asks (a button), and None until then.
    """
    which = state.choice()
    key = (which.key, which.data_spec, state.solution_key(solution), batch)
    asked = st.session_state.setdefault("timed_steps", set())
    rough = _rough_step_s(used, batch)
    if key not in asked and (rough is None or rough * TIMED_STEPS > AUTO_TIMING_S):
        wait = f" (about {duration(rough * TIMED_STEPS)})" if rough else ""
        if not st.button(
            f"Estimate the duration: time {TIMED_STEPS} steps{wait}", key="time_steps"
        ):
            return None
    asked.add(key)
    return time_steps(key, solution, which)


def recommended_row(plan: Recommendation, steps_key: str) -> None:
    """The recommendation in one line, with a button that puts its steps in the form's Steps
    field (session key ``steps_key``): one row for every family's finetune form."""
    left, right = st.columns([5, 1], vertical_alignment="center")
    left.markdown(f"**Recommended: {count(plan.steps)} steps**: {plan.reason}.")
    if plan.steps:
        right.button(
            f"Use {count(plan.steps)} steps",
            key="use_recommended",
            on_click=lambda: st.session_state.update({steps_key: plan.steps}),
        )


def control_checkbox() -> bool:
    """The "also finetune the original as a control" choice (off by default)."""
    return st.checkbox(
        "Also finetune the original as a control",
        key="ft_control",
        help="After the compressed network, finetune the uncompressed original with the same "
        "steps, learning rate, batch, seed and data, and test it the same way: a gain the "
        "finetune would give the original too is then not read as the compression's. Kept "
        "and reused when the same model, weights, data and settings ran before.",
    )


def duration_note(steps: int, pace: Pace | None, *, after: str = "", control: bool = False) -> str:
    """The duration of ``steps`` in words, saying it is a prediction and what it rests on.

    With ``control`` the original is finetuned too: up to twice as long (its steps run at about
    the uncompressed network's pace, not timed here), nothing more when it is already kept.
    """
    if pace is None:
        return "Estimated duration: not measured yet (press the button above)."
    twice = (
        "; with the control up to twice that (the original's steps, slower than the compressed "
        "network's), unless the same control ran before"
        if control
        else ""
    )
    return (
        f"**Estimated duration: about {duration(pace.seconds(steps))}** for {count(steps)} "
        f"steps. {TIMED_STEPS} steps of this solution were timed here: "
        f"{duration(pace.warm_s)} for the first {WARM_STEPS} (warm-up), then {pace.step_s:.2g} s "
        f"per step"
        + (
            f", and {EVALUATIONS} test evaluations of {pace.evaluation_s:.2g} s"
            if pace.evaluation_s
            else ""
        )
        + ". A prediction, on a machine others may share: the job shows its real pace and ETA"
        + f"{after}{twice}."
    )


@st.cache_data(show_spinner="Timing a few training steps…", max_entries=32)
def time_steps(key: tuple, _solution: Solution, _which: ModelChoice) -> Pace:
    """Seconds per step of a finetune of ``_solution`` (the family's own loop), timed on a few.

    The same calls as the job (``ModelFamily.training_form`` and ``finetune``, at the batch in
    ``key``), without a run state; a family that evaluates its run states while it trains
    (``ModelFamily.finetune_steps``) has one such evaluation timed too, as the job runs
    EVALUATIONS of them.
    """
    family, bundle, traced = caches.family(_which), caches.bundle(_which), caches.traced(_which)
    data = caches.data(_which)
    training = family.training_form(bundle.model, traced, _solution)  # a new module
    # one step more than timed: a loop may evaluate at its last step
    config = family.finetune_config({"steps": TIMED_STEPS + 1, "batch_size": key[-1]}, data)
    elapsed: list[float] = []
    run = family.finetune(
        bundle,
        traced,
        training,
        data,
        config,
        checkpoint=None,
        metadata={},
        progress=lambda report: elapsed.append(report.elapsed_s),
        cancel=None,
    )
    pace = _per_step(elapsed)
    if family.finetune_steps(config, data) is None:
        return pace
    started = time.perf_counter()
    family.interim_figures(run.network, data)  # as the job does, EVALUATIONS times
    return dataclasses.replace(pace, evaluation_s=time.perf_counter() - started)


def _per_step(elapsed: list[float]) -> Pace:
    """The warm-up's seconds and the median later step (a UNet's last step also evaluates)."""
    later = [elapsed[i] - elapsed[i - 1] for i in range(WARM_STEPS, TIMED_STEPS)]
    return Pace(warm_s=elapsed[WARM_STEPS - 1], step_s=statistics.median(later))


def _rough_step_s(used: TablesInUse | None, batch: int) -> float | None:
    """A training step as three forward passes of the measured original (None: no measurement)."""
    if used is None:
        return None
    meta = used.tables.meta
    network_ms, table_batch = meta.get("network_latency_ms"), meta.get("batch")
    if not network_ms or not table_batch:
        return None
    return 3 * float(network_ms) / 1000 * batch / int(table_batch)


def _share(solution: Solution, used: TablesInUse | None) -> float:
    return solution.latency_ms / used.original_ms if used and used.original_ms else 1.0


def _changes_nothing(solution: Solution, chain: Chain) -> bool:
    acting = {p for p in range(1, chain.last_position + 1) if chain.activations[p] is not None}
    pruned = set(range(1, chain.last_position + 1)) - set(solution.kept_convs)
    return acting <= set(solution.kept_activations) and not pruned
