"""The prompt network's promotion gate: a fine-tuned prompt network becomes part of the current
model only when, on accepted cases held out of its training, it does no worse than the current
version's prompt network.

Each held-out case's objects are the labels its accepted label map holds. The simulated user of
training (train_prompt.network_rounds: a click inside the largest error region, answered on the
crop around it and applied as the session applies it) clicks up to max(CLICKS) times on each
object, from an empty mask (a new structure) and from the current version's draft (its delivered
label for the case's image), on the prompt network's grid. Figures per network: mean Dice after 1
and after 5 clicks from each start, and the clicks that lowered their object's Dice by more than
HARM_DICE. The new network is published when each Dice figure is at least the current one's +
`margin` and it makes no more harmful clicks; it goes into a new registry version: a copy of the
current version with the new prompt.pt (the published versions are never changed).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..bundle import Bundle, load_bundle, update_bundle
from .. import metrics
from ..registry import ModelRegistry
from ..interactive.prompt_cases import to_prompt_grid
from ..interactive.prompt_net import CLICK_CHANNELS, NETWORK_NAME
from ..interactive.train_prompt import network_rounds

CLICKS = (1, 5)  # the Dice figures: after this many clicks
HARM_DICE = 0.01  # a click that lowers its object's Dice by more than this is harmful
STARTS = ("empty", "draft")


@dataclass
class HeldoutCase:
    """A held-out accepted case: its image and accepted label (the truth)."""

    key: str
    image: sitk.Image
    label: sitk.Image


def channels_of(bundle: Bundle) -> int:
    return int(bundle.network_spec(NETWORK_NAME).get("in_channels", CLICK_CHANNELS))


def draft_arrays(bundle: Bundle, cases: list[HeldoutCase]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image normalised as "target", truth, draft) arrays on the prompt network's grid per case (2D
    for a 2D bundle); the draft is what `bundle`'s engine delivers for the case's image."""
    from ..engine import Engine

    engine = Engine(bundle, device="cpu", threads=torch.get_num_threads(), tta_n=1)
    arrays = []
    for case in cases:
        draft = engine.segment(case.image, preview=False, uncertainty=False).label
        image, truth = to_prompt_grid(case.image, case.label, bundle.spatial_dims)
        draft = to_prompt_grid(case.image, draft, bundle.spatial_dims)[1]
        arrays.append((bundle.normalize(image, "target"), truth, draft))
    return arrays


def click_figures(network: torch.nn.Module, channels: int, arrays) -> dict:
    """The gate's figures of `network` (of `channels` inputs) on `arrays` (draft_arrays)."""
    network = network.cpu().eval()
    after = {(start, k): [] for start in STARTS for k in CLICKS}
    harmful = clicks = 0
    for image, truth_map, draft in arrays:
        for value in (int(v) for v in np.unique(truth_map) if v != 0):
            truth = truth_map == value
            for start, mask in (("empty", np.zeros_like(truth)), ("draft", draft == value)):
                current = mask.copy()
                dice = [metrics.dice(current, truth)]
                network_rounds(truth, image, current, network, max(CLICKS), channels=channels,
                               after_click=lambda c: dice.append(metrics.dice(c, truth)))
                for k in CLICKS:  # a user with no error left stops: the last Dice stands
                    after[(start, k)].append(dice[min(k, len(dice) - 1)])
                harmful += sum(b < a - HARM_DICE for a, b in zip(dice, dice[1:]))
                clicks += len(dice) - 1
    figures = {f"dice_{start}_{k}": float(np.mean(v)) for (start, k), v in after.items() if v}
    return {**figures, "harmful_clicks": int(harmful), "clicks": int(clicks),
            "objects": len(after[(STARTS[0], CLICKS[0])])}


def verdict(new: dict, current: dict, margin: float) -> str | None:
    """Why the new network is not published, or None when it passes."""
    dice = [k for k in new if k.startswith("dice_")]
    if not dice:
        return "the held-out accepted cases hold no object of the model's labels to click on"
    worse = [k for k in dice if new[k] < current[k] + margin]
    reasons = []
    if worse:
        reasons.append("Dice below the current network's" + (f" + {margin}" if margin else "") + " ("
                       + ", ".join(f"{k} {new[k]:.3f} vs {current[k]:.3f}" for k in worse) + ")")
    if new["harmful_clicks"] > current["harmful_clicks"]:
        reasons.append(f"more clicks lowering Dice by > {HARM_DICE} ({new['harmful_clicks']} vs "
                       f"{current['harmful_clicks']})")
    return "; ".join(reasons) or None


def gate_and_publish(network: torch.nn.Module, channels: int, training: dict, cases: list[HeldoutCase],
                     registry: ModelRegistry, candidate: Path, margin: float) -> dict:
    """Compare `network` (of `channels` inputs) with the current version's prompt network on
    `cases` and publish it with the current version's other networks when it passes. Returns the
    figures and the decision."""
    version = registry.current_version()
    current = load_bundle(registry.versions_dir / version)
    result = {"compared_with": version, "heldout_cases": len(cases), "published": None, "margin": margin}
    if not current.has_network(NETWORK_NAME):
        result["reason"] = f"the current version {version} has no prompt network to compare with"
        return result
    arrays = draft_arrays(current, cases)
    result["current"] = click_figures(current.network(NETWORK_NAME), channels_of(current), arrays)
    result["new"] = click_figures(network, channels, arrays)
    reason = verdict(result["new"], result["current"], margin)
    if reason:
        result["reason"] = reason
        return result
    shutil.rmtree(candidate, ignore_errors=True)
    shutil.copytree(registry.versions_dir / version, candidate)
    try:
        grid = dict(current.metadata.get(NETWORK_NAME, {}))
        grid["training"] = {**training, "fine_tuned_from": grid.get("training")}
        update_bundle(candidate, networks={NETWORK_NAME: network.cpu().eval()}, metadata={NETWORK_NAME: grid})
        result["published"] = registry.publish(candidate, {"prompt_gate": {k: v for k, v in result.items()
                                                                         if k != "published"}},
                                               protect=(version,))
    finally:
        shutil.rmtree(candidate, ignore_errors=True)
    return result


def carry_current_prompt(candidate: Path, registry: ModelRegistry) -> None:
    """Give a segmenter candidate the current version's prompt network (it has its own gate), so
    publishing a segmenter never brings back an older prompt network."""
    current = load_bundle(registry.current_path())
    if current.has_network(NETWORK_NAME):
        update_bundle(candidate, networks={NETWORK_NAME: current.network(NETWORK_NAME)},
                      metadata={NETWORK_NAME: current.metadata.get(NETWORK_NAME, {})})
