"""The background trainer's prompt stage: after the segmenter's epochs (process.py), the model's
prompt network is fine-tuned on the accepted cases, then gated and published (prompt_promotion.py).

Accepted cases are split as the segmenter's trainer splits them: the cases it leaves out (new
structures, trainer.left_out) are left out here too, and of the rest every
`holdout_every`-th (trainer.is_heldout) judges the network and is never trained on. The training
cases are train_prompt's target samples, `prompt_share` of them: the accepted label map is the
truth (the clinician's edits), the image as accepted, no synthetic contrast; the other samples
come from the trainer's labelled source data, as train_prompt draws source samples (all samples
come from the accepted cases when the trainer has none). Each epoch is `prompt_steps` steps of
train_prompt with its simulated user, continuing from the last epoch's network (which answers the
earlier clicks of some samples). After each epoch the network and its history go to
prompt_checkpoint.pt, so a stopped or killed trainer resumes at the epoch it was in (a stopped
epoch is run again). status.json's "prompt" holds the stage's state, one line per epoch in
"history", the cases it uses or leaves out and why, and the gate's figures ("last_gate").
"""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path

from ..bundle import load_bundle
from ..errors import InputError
from ..interactive.prompt_net import NETWORK_NAME
from ..interactive.target_cases import target_prompt_case
from ..interactive.train_prompt import source_prompt_case, train_prompt
from ..store import atomic_write_bytes
from ..training.loops import load_checkpoint
from .prompt_promotion import HeldoutCase, channels_of, gate_and_publish
from .trainer import is_heldout, labelled_pairs, left_out

CHECKPOINT = "prompt_checkpoint.pt"


class PromptStage:
    """One run of the stage for the trainer process `run` (process._Run: its workdir, config,
    status and stop request)."""

    def __init__(self, run, params, registry, store):
        self.run_, self.params, self.registry, self.store = run, params, registry, store
        self.path = Path(run.workdir) / CHECKPOINT
        self.status: dict = {}

    def report(self, **values) -> None:
        self.status.update(values)
        self.run_.write_status(prompt=self.status, message=self.message())

    def message(self) -> str:
        """The stage in one line, for the front ends' trainer panel."""
        state, gate = self.status.get("state"), self.status.get("last_gate") or {}
        if state == "training":
            return f"prompt network: epoch {self.status.get('epoch', 0)} of {self.status.get('epochs')}"
        if state == "gating":
            return "prompt network: comparing it with the current one on held-out accepted cases"
        if state == "published":
            return f"prompt network published as {gate.get('published')}"
        if state == "kept":
            return f"prompt network kept as it was: {gate.get('reason')}"
        return f"prompt network not retrained: {self.status.get('reason')}"

    def save(self, network, epoch: int, history: list, base: str, done: bool = False) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save({"network": network.state_dict(), "epoch": epoch, "history": history, "base_version": base,
                    "done": done, "status": self.status}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    def run(self) -> bool:
        """Fine-tune, gate and publish; False when a stop request interrupted it."""
        p = self.params
        checkpoint = load_checkpoint(self.path) if self.path.is_file() else None
        if checkpoint is not None and checkpoint.get("done") and checkpoint["epoch"] >= p.prompt_epochs:
            self.report(**checkpoint["status"])  # finished: more prompt_epochs continue it
            return True
        if p.prompt_epochs == 0:
            self.report(state="skipped", reason="prompt_epochs is 0")
            return True
        if checkpoint is not None and checkpoint["base_version"] not in self.registry.versions():
            checkpoint = None  # its starting version was removed: start afresh from the current one
        base = checkpoint["base_version"] if checkpoint else self.registry.current_version()
        bundle = load_bundle(self.registry.versions_dir / base)
        if not bundle.has_network(NETWORK_NAME):
            self.report(state="skipped", reason=f"model version {base} has no prompt network")
            return True
        train, heldout, skipped = self.accepted_cases(bundle)
        self.report(state="training", base_version=base, skipped=skipped, n_train=len(train),
                    n_heldout=len(heldout), epochs=p.prompt_epochs)
        if not train and not heldout:
            self.report(state="skipped", reason="no accepted case of this model to learn from"
                        + (f" ({len(skipped)} left out, see skipped)" if skipped else ""))
            return True
        if not train or not heldout:
            self.report(state="skipped", reason=(
                f"needs accepted cases to train on and held-out ones to judge by (the 2nd, then every "
                f"{p.holdout_every}th); has {len(train)} to train on and {len(heldout)} held out"))
            return True
        source = self.source_cases(bundle)
        share = p.prompt_share if source else 1.0
        channels = channels_of(bundle)
        network = copy.deepcopy(bundle.network(NETWORK_NAME))
        epoch, history = 0, []
        if checkpoint is not None:
            network.load_state_dict(checkpoint["network"])
            epoch, history = int(checkpoint["epoch"]), list(checkpoint["history"])
            print(f"prompt stage resumed at epoch {epoch}", flush=True)
        self.report(n_source=len(source), accepted_share=share, epoch=epoch, history=history)
        while epoch < p.prompt_epochs:
            if self.run_.stopping():
                return False
            tick = time.time()
            pools = (source, train) if source else (train, ())
            trained, summary = train_prompt(pools[0], 0.0, seed=p.seed + epoch, batch=p.prompt_batch, lr=p.prompt_lr,
                                            steps_limit=p.prompt_steps, init=network, log=lambda _: None,
                                            target_cases=pools[1], target_share=share, channels=channels,
                                            stop=self.run_.stopping)
            if summary["stopped_early"]:
                return False  # this epoch runs again on resume
            network, epoch = trained, epoch + 1
            line = {"epoch": epoch, "steps": summary["steps"], "loss": summary["final_loss"],
                    "seconds": round(time.time() - tick, 1)}
            history.append(line)
            self.report(epoch=epoch, history=history)
            self.save(network, epoch, history, base)
            print(json.dumps({"prompt_epoch": line}), flush=True)
        self.report(state="gating")
        training = {"data": f"accepted cases ({len(train)}, {share:.0%} of samples) and labelled source cases "
                            f"({len(source)}), simulated clicks", "base_version": base, "epochs": epoch,
                    "steps": p.prompt_steps * epoch, "batch": p.prompt_batch, "lr": p.prompt_lr, "seed": p.seed,
                    "history": history}
        gate = gate_and_publish(network, channels, training, heldout, self.registry,
                                Path(self.run_.workdir) / "prompt_candidate", p.prompt_margin)
        self.report(state="published" if gate["published"] else "kept", last_gate=gate)
        print(json.dumps({"prompt_gate": gate}, default=float), flush=True)
        self.save(network, epoch, history, base, done=True)
        return True

    def accepted_cases(self, bundle) -> tuple[list, list, dict]:
        """(training PromptCases, HeldoutCases, {case key: why it is left out})."""
        kept, skipped = [], {}
        for case_id in self.store.cases():
            key = f"accepted:{case_id}"
            reason = left_out(self.store.manifest(case_id))
            if reason:
                skipped[key] = reason
                continue
            try:
                kept.append((key, self.store.load(case_id)))
            except InputError as error:
                skipped[key] = str(error)
        train, heldout = [], []
        for i, (key, case) in enumerate(kept):
            if is_heldout(i, self.params.holdout_every):
                heldout.append(HeldoutCase(key, case.image, case.label))
                continue
            prompt_case = target_prompt_case(case.image, case.label, bundle)
            if prompt_case.values:
                train.append(prompt_case)
            else:
                skipped[key] = "its label map holds no labelled voxel on the prompt network's grid"
        return train, heldout, skipped

    def source_cases(self, bundle) -> list:
        """The trainer's labelled source data (config "source": images/ and labels/) as source samples."""
        from ..imageio import read_image

        return [source_prompt_case(read_image(image), read_image(label), bundle)
                for image, label in labelled_pairs(self.run_.config.get("source"))]
