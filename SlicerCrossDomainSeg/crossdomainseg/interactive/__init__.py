"""Click-based correction: the session, the learned refiner, baselines, the robot user, and the
`eval clicks` / `train-refiner` commands.

Front ends use it like this (points in LPS mm; Slicer's RAS needs x and y negated first):

    refiner = LearnedRefiner.from_bundle(engine.bundle)          # once per model: loads and warms
    session = InteractiveSession.from_result(image, result, engine.bundle, refiner)
    r = session.add_click((x, y, z), positive=True, label=1)     # r.label (z, y, x), r.box, r.changed
    session.paint(mask, label)                                   # hand edit: locked against clicks
    session.undo(); session.redo()
    session.set_refiner(new_refiner)                             # model reloaded: clicks kept
    session.rebase(other_image, other_label, ...)                # new result or grid: clicks replayed
    session.label_image()                                        # SimpleITK label on the input grid
"""

from .session import Click, ClickResult, CropInputs, InteractiveSession

__all__ = ["Click", "ClickResult", "CropInputs", "InteractiveSession"]
