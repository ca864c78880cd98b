"""The robot user: a simulated user corrects one label of a click session, click after click,
and its Dice is recorded after each; `noc` counts the clicks it needed."""

import time

import numpy as np

from ..interactive.simulate import next_click


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def noc(dice_curve, threshold: float, cap: int = 20) -> tuple[int, bool]:
    """(clicks needed to reach `threshold`, reached) with the count capped at `cap`."""
    for k, value in enumerate(dice_curve[: cap + 1]):
        if value >= threshold:
            return k, True
    return cap, False


def robot_on_label(session, truth: np.ndarray, label: int, max_clicks: int = 20):
    """The robot correcting `label` of an InteractiveSession for `max_clicks` clicks.

    `truth` is the reference label array on the session grid. Clicks reach the session in
    patient coordinates, as a front end sends them. Returns (Dice of the label after 0..max_clicks
    clicks, seconds per click, largest Dice drop any click caused to another label)."""
    target = truth == label
    others = [int(v) for v in np.unique(truth) if v not in (0, label)]
    curve = [dice(target, session.label == label)]
    other = [dice(truth == v, session.label == v) for v in others]
    latencies, other_drop = [], 0.0
    for _ in range(max_clicks):
        click = next_click(target, session.label == label, session.spacing, ~session.locked)
        if click is not None:
            point = session.image.TransformIndexToPhysicalPoint(tuple(int(i) for i in reversed(click.index)))
            start = time.perf_counter()
            session.add_click(point, click.positive, label)
            latencies.append(time.perf_counter() - start)
            now = [dice(truth == v, session.label == v) for v in others]
            other_drop = max([other_drop] + [a - b for a, b in zip(other, now)])
            other = now
        curve.append(dice(target, session.label == label))
    return curve, latencies, other_drop
