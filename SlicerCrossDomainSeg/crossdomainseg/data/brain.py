"""Brain labels of task brain-t1-t2, derived from the ICBM152 2009c template.

The parcellation (Harvard-Oxford based) gives the ventricles, deep grey nuclei, brainstem and
cerebellum; the tissue probability maps split the rest of the brain into white matter, cortical
grey matter and CSF (the most probable of the three). Hippocampus and amygdala are grey matter of
the temporal lobe's medial surface and go to cortical_grey_matter; the nucleus accumbens (85-90
voxels a side at 2 mm) is the ventral striatum, continuous with the caudate head, and goes to
caudate. Colours follow FreeSurfer's lookup table (as Slicer shows FreeSurfer labels).
"""

from __future__ import annotations

import numpy as np

LABELS = {"background": 0, "white_matter": 1, "cortical_grey_matter": 2, "lateral_ventricles": 3,
          "csf": 4, "thalamus": 5, "caudate": 6, "putamen": 7, "pallidum": 8, "brainstem": 9,
          "cerebellum": 10}
COLORS = {"background": [0, 0, 0], "white_matter": [245, 245, 245], "cortical_grey_matter": [205, 62, 78],
          "lateral_ventricles": [120, 18, 134], "csf": [60, 60, 60], "thalamus": [0, 118, 14],
          "caudate": [122, 186, 220], "putamen": [236, 13, 176], "pallidum": [12, 48, 255],
          "brainstem": [119, 159, 176], "cerebellum": [230, 148, 34]}

# Parcellation values (left, right) kept as their own structure.
PARCELS = {
    "lateral_ventricles": (3, 4), "brainstem": (5,), "thalamus": (34, 45), "caudate": (35, 46, 41, 51),
    "putamen": (36, 47), "pallidum": (37, 48), "cerebellum": (255,),
    "cortical_grey_matter": (39, 40, 49, 50),  # hippocampus, amygdala
}
TISSUES = ("csf", "cortical_grey_matter", "white_matter")  # order of the tissue probability maps


def label_map(parc: np.ndarray, tpm: np.ndarray, brainmask: np.ndarray) -> np.ndarray:
    """uint8 labels on the template grid from the parcellation, the (csf, gm, wm) probability maps
    and the brain mask."""
    label = np.zeros(parc.shape, np.uint8)
    tissue = np.argmax(tpm, axis=0)
    brain = (brainmask | (parc > 0)) & (tpm.max(axis=0) > 0)
    for index, name in enumerate(TISSUES):
        label[brain & (tissue == index)] = LABELS[name]
    for name, values in PARCELS.items():
        label[np.isin(parc, values)] = LABELS[name]
    return label
