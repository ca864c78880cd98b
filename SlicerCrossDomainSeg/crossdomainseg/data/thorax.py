"""Random chest anatomy (task xray-drr): one subject = one seed, LPS mm around mid-thorax.

Labelled: lungs and heart. Unlabelled but visible in projection: ribs, clavicles, scapulae, spine,
mediastinum with trachea and aortic knob, the diaphragm domes with the liver and a gastric gas
bubble, fat and muscle of the chest wall.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .shapes import Capsule, Cylinder, Deformation, Ellipsoid, Ring, Slabs, Step, rotation

LABELS = {"background": 0, "lungs": 1, "heart": 2}
COLORS = {"background": [0, 0, 0], "lungs": [197, 165, 145], "heart": [206, 110, 84]}


class Tissue(IntEnum):
    AIR = 0
    FAT = 1
    MUSCLE = 2
    SOFT = 3
    BONE = 4
    SPONGY_BONE = 5
    LUNG = 6
    AIRWAY = 7
    GAS = 8
    LIVER = 9
    BLOOD = 10
    HEART = 11


HU = {  # (mean, texture amplitude)
    Tissue.AIR: (-1000, 0), Tissue.FAT: (-100, 10), Tissue.MUSCLE: (45, 10), Tissue.SOFT: (35, 10),
    Tissue.BONE: (900, 120), Tissue.SPONGY_BONE: (300, 60), Tissue.LUNG: (-820, 70), Tissue.AIRWAY: (-950, 10),
    Tissue.GAS: (-950, 20), Tissue.LIVER: (55, 8), Tissue.BLOOD: (45, 5), Tissue.HEART: (40, 8),
}


@dataclass
class Subject:
    steps: list[Step]
    deformation: Deformation


def sample_thorax(seed: int) -> Subject:
    rng = np.random.default_rng([seed, 505])
    s = rng.uniform(0.9, 1.1)
    shift = np.array([rng.uniform(-8, 8), 0.0, rng.uniform(-10, 10)])
    body_r = np.array([rng.uniform(138, 162), rng.uniform(92, 112)]) * s
    fat, wall = rng.uniform(6, 22), rng.uniform(9, 14)
    cav_r = body_r - fat - wall
    shoulder = shift[2] + rng.uniform(125, 145)
    dome_r, dome_l = shift[2] - rng.uniform(85, 105), shift[2] - rng.uniform(95, 115)
    c = (shift[0], shift[1])
    spine_y = cav_r[1] * 0.8
    steps = [
        Step(Cylinder(c, tuple(body_r), z_high=shoulder), Tissue.FAT),
        Step(Ellipsoid([shift[0], 0, shoulder], [body_r[0] * 0.95, body_r[1] * 0.9, 35]), Tissue.MUSCLE),
        Step(Cylinder((shift[0], 5), (rng.uniform(50, 60), rng.uniform(45, 55))), Tissue.MUSCLE),  # neck
        Step(Cylinder(c, tuple(body_r - fat), z_high=shoulder), Tissue.MUSCLE),
        Step(Cylinder(c, tuple(cav_r), z_high=shoulder + 10), Tissue.SOFT, name="cavity"),
    ]
    # Lungs, carved below by the diaphragm domes (liver right, spleen/stomach left).
    for side in (-1, 1):
        radii = [cav_r[0] * rng.uniform(0.44, 0.5), cav_r[1] * rng.uniform(0.85, 0.95), rng.uniform(120, 140)]
        apex = shoulder - rng.uniform(5, 20)  # rounded apices just below the shoulders
        centre = [shift[0] + side * cav_r[0] * rng.uniform(0.46, 0.54), rng.uniform(0, 15), apex - radii[2]]
        steps.append(Step(Ellipsoid(centre, radii, rotation([0, 1, 0], side * rng.uniform(0, 8))), Tissue.LUNG,
                          within="cavity"))
    steps += [
        Step(Ellipsoid([shift[0] - 55, 0, dome_r - 70], [cav_r[0] * 0.9, cav_r[1] * 1.1, 75]), Tissue.LIVER,
             within="cavity"),
        Step(Ellipsoid([shift[0] + 60, 10, dome_l - 70], [cav_r[0] * 0.8, cav_r[1] * 1.1, 70]), Tissue.SOFT,
             within="cavity"),
        Step(Ellipsoid([shift[0] + rng.uniform(45, 70), rng.uniform(-30, -5), dome_l - rng.uniform(15, 25)],
                       [rng.uniform(20, 35), rng.uniform(18, 28), rng.uniform(10, 16)]), Tissue.GAS, within="cavity"),
    ]
    # Mediastinum with trachea, aortic knob and spine.
    steps += [
        Step(Cylinder((shift[0] + 5, -10), (rng.uniform(22, 30), cav_r[1] * 0.75), z_low=dome_r),
             Tissue.SOFT, within="cavity"),
        Step(Capsule([shift[0], -5, shoulder + 60], [shift[0] + 5, 5, shift[2] + 50], rng.uniform(7, 10)),
             Tissue.AIRWAY),
        Step(Ellipsoid([shift[0] + rng.uniform(18, 30), 10, shift[2] + rng.uniform(55, 75)], [18, 18, 20]),
             Tissue.BLOOD, within="cavity"),
        Step(Cylinder((shift[0], spine_y), (18, 16)), Tissue.SPONGY_BONE),
        Step(Slabs(Cylinder((shift[0], spine_y), (18, 16)), period=rng.uniform(24, 28), thickness=5),
             Tissue.SOFT),
    ]
    # Heart: apex to the left and down; size varies (cardiothoracic ratio).
    heart_c = [shift[0] + rng.uniform(10, 30), -cav_r[1] * rng.uniform(0.2, 0.35), dome_r + rng.uniform(35, 50)]
    heart_r = np.array([rng.uniform(58, 75), rng.uniform(45, 58), rng.uniform(52, 64)]) * s
    tilt = rotation([0, 1, 0], -rng.uniform(20, 45)) @ rotation([0, 0, 1], rng.uniform(-20, 20))
    steps.append(Step(Ellipsoid(heart_c, heart_r, tilt), Tissue.HEART, within="cavity"))
    # Ribs (tilted slabs of the chest-wall ring: posterior ends higher), clavicles, scapulae.
    rib_ring = Ring(Cylinder(c, tuple(cav_r + wall * 0.6), z_low=dome_r - 60, z_high=shoulder - 10), inner=0.93)
    steps.append(Step(Slabs(rib_ring, period=rng.uniform(22, 28), thickness=rng.uniform(8, 11),
                            phase=rng.uniform(0, 25), slope=rng.uniform(0.35, 0.5)), Tissue.BONE))
    for side in (-1, 1):
        steps.append(Step(Capsule([shift[0] + side * 20, -body_r[1] * 0.7, shoulder - 5],
                                  [shift[0] + side * body_r[0] * 0.9, -10, shoulder + rng.uniform(5, 20)],
                                  rng.uniform(6, 9)), Tissue.BONE))
        steps.append(Step(Ellipsoid([shift[0] + side * body_r[0] * 0.6, body_r[1] * 0.75, shoulder - 70],
                                    [body_r[0] * 0.3, 6, 65], rotation([0, 1, 0], side * 15)), Tissue.SPONGY_BONE))
    return Subject(steps=steps, deformation=Deformation(rng, amplitude_mm=rng.uniform(4, 8)))
