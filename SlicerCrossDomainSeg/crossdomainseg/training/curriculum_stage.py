"""The curriculum stage of `train all`: CurriculumTrainer (curriculum/trainer.py) on the unlabelled
target images, with the source training cases as low-weight replay.

The student starts as the segmenter of the bundle the stage starts from, which also stays frozen as
the reference S_pre (network `reference` of the result, CurriculumTrainer.export). After every
epoch the student is exported as the stage's bundle with the per-epoch history (confident samples,
losses, thresholds) and the trainer's state is checkpointed, so a killed run resumes at its last
finished epoch. The trainer is kept between calls of `run`, so the first timed epoch and the rest
read the images and compute their uncertainty U(x) once.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

from ..bundle import load_bundle, update_bundle
from ..curriculum.params import CurriculumParams
from ..curriculum.trainer import CurriculumTrainer, prepare
from ..errors import InputError
from ..imageio import read_image
from .loops import Checkpoint, same_run


class CurriculumStage:
    """The curriculum from the bundle at `start_bundle` into the bundle at `out`, resumable from
    `checkpoint_dir`; (id, image, label-or-None) target and labelled source cases."""

    def __init__(self, start_bundle: Path, out: Path, checkpoint_dir: Path, target_cases, source_cases,
                 params: CurriculumParams, device, progress: bool = True, log=print):
        self.start_bundle, self.out = Path(start_bundle), Path(out)
        self.checkpoint = Checkpoint(checkpoint_dir, "curriculum")
        self.target_cases, self.source_cases = list(target_cases), list(source_cases)
        self.params, self.device, self.progress, self.log = params, device, progress, log
        self.trainer: CurriculumTrainer | None = None

    def _build(self, resume: bool) -> CurriculumTrainer:
        bundle = load_bundle(self.start_bundle)
        target = [prepare(bundle, read_image(path), f"target:{case_id}") for case_id, path, _ in self.target_cases]
        source = [prepare(bundle, read_image(image), f"source:{case_id}", "source", read_image(label))
                  for case_id, image, label in self.source_cases]
        trainer = CurriculumTrainer(bundle, self.params, target, source=source, device=self.device)
        state = self.checkpoint.load() if resume else None
        if state is not None:
            if not same_run(state["params"], self.params.to_dict()):
                raise InputError(f"Checkpoint {self.checkpoint.file} was made with other settings; "
                                 "rerun without --resume or with the same settings.")
            trainer.load_state_dict(state)
        trainer.thresholds()  # U(x) of every target image, once (the reference is frozen)
        return trainer

    def run(self, epochs: int, resume: bool, deadline: float | None = None) -> float:
        """Train up to `epochs` epochs in all, stopping at the step that reaches `deadline` (a
        time.time(); its epoch is then left to a resume): an epoch costs more as more images pass
        the gates, so the first one's time does not bound the rest. Returns the wall seconds of the
        last epoch finished here."""
        if self.trainer is None:
            self.trainer = self._build(resume)
        trainer = self.trainer
        trainer.params = dataclasses.replace(trainer.params, epochs=epochs)
        stop = (lambda: time.time() > deadline) if deadline is not None else (lambda: False)
        seconds = 0.0
        while trainer.epoch < epochs:
            began = time.time()
            summary = trainer.run_epoch(stop)
            if summary is None:
                self.log(f"curriculum: its share of the budget is spent; stopped after {trainer.epoch} "
                         f"of {epochs} epochs")
                break
            self._save(trainer)
            seconds = time.time() - began
            if self.progress:
                parts = [f"confident {summary['confident']}/{len(trainer.target)}", f"tau_u={summary['tau_u']:.4g}",
                         *(f"{k}={v:.4f}" for k, v in summary["losses"].items()), f"seconds={seconds:.1f}"]
                self.log(f"curriculum epoch {summary['epoch'] + 1}: " + ", ".join(parts))
        return seconds

    @property
    def epochs_done(self) -> int:
        return self.trainer.epoch if self.trainer is not None else 0

    def _save(self, trainer: CurriculumTrainer) -> None:
        bundle = trainer.export(self.out)
        training = copy.deepcopy(bundle.metadata["training"])
        training["curriculum"]["history"] = trainer.history
        update_bundle(self.out, metadata={"training": training})
        self.checkpoint.save(trainer.state_dict())
