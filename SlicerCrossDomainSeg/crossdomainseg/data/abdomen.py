"""Random abdominal anatomy (task phantom-ct-mr): one subject = one seed.

Coordinates are LPS mm around the middle of the field of view (about 200 x 160 x 160 mm, LR x AP
x SI): x grows to the patient's left, y to the back, z to the head. The liver sits on the right
(negative x), the spleen on the left and back, kidneys beside the spine. Besides the labelled
organs there is unlabelled anatomy (fat, muscle, bone, vessels, stomach fluid and gas, bowel, CSF)
whose intensities overlap the organs' in at least one modality, so intensity alone does not
segment the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .shapes import Capsule, Cylinder, Deformation, Ellipsoid, Ring, Slabs, Step, rotation

FIELD_OF_VIEW_MM = (200.0, 160.0, 160.0)
LABELS = {"background": 0, "liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4}
COLORS = {"background": [0, 0, 0], "liver": [221, 130, 101], "kidneys": [185, 102, 83],
          "spleen": [157, 108, 162], "lesion": [241, 214, 145]}


class Tissue(IntEnum):
    AIR = 0
    FAT = 1
    MUSCLE = 2
    CORTICAL_BONE = 3
    MARROW = 4
    DISC = 5
    CSF = 6
    AORTA = 7
    VEIN = 8
    BOWEL = 9
    GAS = 10
    FLUID = 11
    KIDNEY = 12
    SPLEEN = 13
    LIVER = 14
    LESION = 15


TISSUE_TO_LABEL = np.zeros(len(Tissue), dtype=np.uint8)
TISSUE_TO_LABEL[Tissue.LIVER] = LABELS["liver"]
TISSUE_TO_LABEL[Tissue.KIDNEY] = LABELS["kidneys"]
TISSUE_TO_LABEL[Tissue.SPLEEN] = LABELS["spleen"]
TISSUE_TO_LABEL[Tissue.LESION] = LABELS["lesion"]


@dataclass
class Subject:
    steps: list[Step]
    deformation: Deformation


def _jitter(rng, value, spread):
    return np.asarray(value, dtype=float) + rng.uniform(-spread, spread, size=np.shape(value))


def sample_abdomen(seed: int) -> Subject:
    rng = np.random.default_rng([seed, 101])
    s = rng.uniform(0.88, 1.12)  # body habitus: scales the whole trunk
    shift = np.array([rng.uniform(-6, 6), rng.uniform(-5, 5), rng.uniform(-12, 12)])
    body_r = np.array([rng.uniform(80, 94), rng.uniform(60, 72)])
    fat = rng.uniform(6, 18)
    wall = rng.uniform(7, 11)
    cav_r = body_r - fat - wall
    body_c = (shift[0], shift[1])

    def at(p):
        return shift + np.asarray(p, dtype=float) * s

    spine_y = shift[1] + cav_r[1] * 0.62
    # Lower ribs wrap the back and sides of the upper abdomen: tilted slabs of a ring in the wall.
    rib_ring = Ring(Cylinder(body_c, tuple(body_r - fat - 0.4 * wall), z_low=shift[2] - 5), inner=0.93,
                    y_min=shift[1] - 0.2 * body_r[1])
    steps = [
        Step(Cylinder(body_c, tuple(body_r)), Tissue.FAT),
        Step(Cylinder(body_c, tuple(body_r - fat)), Tissue.MUSCLE),
        Step(Slabs(rib_ring, period=rng.uniform(26, 32), thickness=9, phase=rng.uniform(0, 30), slope=0.3),
             Tissue.CORTICAL_BONE),
        Step(Cylinder(body_c, tuple(cav_r)), Tissue.FAT, name="cavity"),
    ]
    # Spine: vertebral body (cortex + marrow) with discs, canal with CSF, posterior elements,
    # paraspinal and psoas muscles.
    vb_r = rng.uniform(15, 19) * s
    period = rng.uniform(28, 34)
    steps += [
        Step(Cylinder((shift[0] + 28 * s, spine_y + 12), (20 * s, 22 * s)), Tissue.MUSCLE),
        Step(Cylinder((shift[0] - 28 * s, spine_y + 12), (20 * s, 22 * s)), Tissue.MUSCLE),
        Step(Cylinder((shift[0] + 30 * s, spine_y - 12), (12 * s, 14 * s), z_high=shift[2] + 10), Tissue.MUSCLE),
        Step(Cylinder((shift[0] - 30 * s, spine_y - 12), (12 * s, 14 * s), z_high=shift[2] + 10), Tissue.MUSCLE),
        Step(Cylinder((shift[0], spine_y), (vb_r, vb_r * 0.85)), Tissue.CORTICAL_BONE),
        Step(Cylinder((shift[0], spine_y), (vb_r - 3, vb_r * 0.85 - 3)), Tissue.MARROW),
        Step(Slabs(Cylinder((shift[0], spine_y), (vb_r, vb_r * 0.85)), period=period, thickness=7,
                   phase=rng.uniform(0, period)), Tissue.DISC),
        Step(Cylinder((shift[0], spine_y + vb_r + 8), (9, 8)), Tissue.CORTICAL_BONE),
        Step(Cylinder((shift[0], spine_y + vb_r + 8), (6, 5.5)), Tissue.CSF),
        Step(Slabs(Cylinder((shift[0], spine_y + vb_r + 24), (5, 9)), period=period, thickness=period * 0.6,
                   phase=rng.uniform(0, period)), Tissue.CORTICAL_BONE),
        # Great vessels in front of the spine: aorta left, inferior vena cava right.
        Step(Cylinder((shift[0] + 14 * s, spine_y - vb_r - 10), (rng.uniform(9, 12),) * 2), Tissue.AORTA,
             within="cavity"),
        Step(Cylinder((shift[0] - 18 * s, spine_y - vb_r - 8), (rng.uniform(10, 13), rng.uniform(7, 10))),
             Tissue.VEIN, within="cavity"),
    ]
    # Bowel loops in the lower and anterior abdomen, some with gas.
    for _ in range(rng.integers(6, 11)):
        c = at([rng.uniform(-45, 45), rng.uniform(-40, 5), rng.uniform(-75, -5)])
        r = rng.uniform(10, 20, size=3)
        steps.append(Step(Ellipsoid(c, r, rotation(rng.normal(size=3), rng.uniform(0, 180))), Tissue.BOWEL,
                          within="cavity"))
        if rng.random() < 0.5:
            steps.append(Step(Ellipsoid(c + [0, -r[1] * 0.3, 0], r * 0.45), Tissue.GAS, within="cavity"))
    # Stomach (fluid with an anterior gas cap) in the left upper quadrant.
    st_c = at(_jitter(rng, [32, -18, 38], 6))
    st_r = _jitter(rng, [26, 20, 32], 4) * s
    steps += [
        Step(Ellipsoid(st_c, st_r, rotation([0, 1, 0], rng.uniform(-25, 0))), Tissue.BOWEL, within="cavity"),
        Step(Ellipsoid(st_c, st_r - 3, rotation([0, 1, 0], rng.uniform(-25, 0))), Tissue.FLUID, within="cavity"),
        Step(Ellipsoid(st_c + [0, -st_r[1] * 0.55, st_r[2] * 0.3], st_r * [0.6, 0.3, 0.4]), Tissue.GAS,
             within="cavity"),
    ]
    # Kidneys: bean shapes (hilum carved out medially), upper poles tilted toward the spine;
    # painted after the liver, which they indent, so each kidney stays one piece.
    kidneys = []
    for side in (-1, 1):
        c = at([side * rng.uniform(42, 52), 0, rng.uniform(-25, -5) - (6 if side < 0 else 0)])
        r = _jitter(rng, [20, 16, 45], 3) * rng.uniform(0.88, 1.12)
        # Beside the spine but mostly inside the cavity (whose back wall curves forward laterally).
        back = shift[1] + cav_r[1] * np.sqrt(max(0.0, 1 - ((c[0] - shift[0]) / cav_r[0]) ** 2))
        c[1] = min(spine_y + rng.uniform(-4, 6), back - 0.6 * r[1])
        tilt = rotation([0, 1, 0], side * rng.uniform(10, 22)) @ rotation([0, 0, 1], side * rng.uniform(15, 35))
        kidneys.append(Ellipsoid(c, r, tilt))
    kidney_steps = []
    for side, kidney in zip((-1, 1), kidneys):
        hilum = Ellipsoid(kidney.centre - kidney.rotation[:, 0] * side * kidney.radii[0] * 0.95,
                          kidney.radii * [0.45, 0.45, 0.35], kidney.rotation)
        kidney_steps += [Step(kidney, Tissue.KIDNEY, within="cavity"), Step(hilum, Tissue.FAT, within="cavity")]
    # Spleen: posterolateral left, flattened against the wall.
    sp_c = at(_jitter(rng, [50, 18, 32], 6))
    sp_r = _jitter(rng, [16, 34, 42], 4) * rng.uniform(0.8, 1.2)
    steps.append(Step(Ellipsoid(sp_c, sp_r, rotation([0, 0, 1], rng.uniform(-45, -20))), Tissue.SPLEEN,
                      within="cavity"))
    # Liver: right lobe plus a left lobe reaching across the midline; painted after its
    # neighbours so that it stays one solid organ around the lesion.
    liver_scale = rng.uniform(0.88, 1.12)
    rl_c = at(_jitter(rng, [-30, -4, 22], 5))
    rl_r = _jitter(rng, [36, 40, 50], 4) * liver_scale * s
    rl_rot = rotation(rng.normal(size=3), rng.uniform(0, 15))
    ll_c = at(_jitter(rng, [8, -24, 38], 5))
    ll_r = _jitter(rng, [34, 18, 26], 3) * liver_scale * s
    steps += [
        Step(Ellipsoid(rl_c, rl_r, rl_rot), Tissue.LIVER, within="cavity"),
        Step(Ellipsoid(ll_c, ll_r, rotation([0, 0, 1], rng.uniform(-20, 5))), Tissue.LIVER, within="cavity"),
        Step(Capsule(rl_c + [10, 8, -10], rl_c + [25, 5, 25], rng.uniform(4, 6)), Tissue.VEIN, within="cavity"),
        *kidney_steps,
    ]
    # Lesion: 8-20 mm, kept a margin inside both the right lobe and the cavity and away from what
    # is painted over the liver (portal vein, kidneys), so it is always surrounded by liver.
    diameter = rng.uniform(8, 20)
    radius = diameter / 2
    lesion = _place_lesion(rng, radius, rl_c, rl_r, rl_rot, (body_c, cav_r), rl_c + [10, 8, -10],
                           rl_c + [25, 5, 25], kidneys)
    shape = rotation(rng.normal(size=3), rng.uniform(0, 180))
    steps.append(Step(Ellipsoid(lesion, radius * rng.uniform(0.9, 1.1, size=3), shape), Tissue.LESION))
    return Subject(steps=steps, deformation=Deformation(rng, amplitude_mm=rng.uniform(3, 6)))


def _place_lesion(rng, radius, centre, radii, rot, cavity, vein_a, vein_b, kidneys, margin=6.0):
    (cx, cy), (rx, ry) = cavity
    for _ in range(1000):
        local = rng.uniform(-1, 1, size=3) * (radii - radius - margin)
        if ((local / (radii - radius - margin)) ** 2).sum() > 1:
            continue
        p = centre + rot @ local
        in_cavity = ((p[0] - cx) / (rx - radius - margin)) ** 2 + ((p[1] - cy) / (ry - radius - margin)) ** 2 <= 1
        t = np.clip((p - vein_a) @ (vein_b - vein_a) / ((vein_b - vein_a) @ (vein_b - vein_a)), 0, 1)
        clear_of_vein = np.linalg.norm(p - vein_a - t * (vein_b - vein_a)) > radius + 6 + margin
        clear_of_kidneys = all(
            (((k.rotation.T @ (p - k.centre)) / (k.radii + radius + margin + 10)) ** 2).sum() > 1 for k in kidneys)
        if in_cavity and clear_of_vein and clear_of_kidneys:
            return p
    raise RuntimeError("could not place the lesion inside the liver")  # a generator bug, not user input
