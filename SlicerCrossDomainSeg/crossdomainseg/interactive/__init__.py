"""Click correction as front ends use it: the session (session.py), crops and click maps
(encoding.py), the click methods a bundle may name (refiner.py: the learned refiner and
`click_refiner`; feature_brs.py: the bundle's segmenter refined at each click; prompt_net.py;
boundary_shift.py; sphere.py), the simulated user and the `train-refiner`
command that trains the refiner. The robot user, the baselines and `eval clicks` live in
crossdomainseg.evaluation, which nothing here imports.

Front ends use it like this (points in LPS mm; Slicer's RAS needs x and y negated first):

    refiner = LearnedRefiner.from_bundle(engine.bundle)          # once per model: loads and warms
    session = InteractiveSession.from_result(image, result, engine.bundle, refiner)
    r = session.add_click((x, y, z), positive=True, label=1)     # r.label (z, y, x), r.box, r.changed
    value, r = session.new_structure((x, y, z))                  # a label the model has not: one click
    value, r = session.new_structure_from_box(corner_a, corner_b)  # or a box (prompt network with a box channel)
    session.paint(mask, label)                                   # hand edit: locked against clicks
    session.undo(); session.redo()
    session.set_refiner(new_refiner)                             # model reloaded: clicks kept
    session.rebase(other_image, other_label, ...)                # new result or grid: clicks replayed
    session.label_image()                                        # SimpleITK label on the input grid
"""

from .session import Click, ClickResult, CropInputs, InteractiveSession

__all__ = ["Click", "ClickResult", "CropInputs", "InteractiveSession"]
