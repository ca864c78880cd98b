"""The patent's memory bank: per target image, how many epochs it was judged suitable.

An image whose counter reached `confident_after` (5 in the patent) is consistently certain: it
skips the uncertainty evaluation and the warm-up gate and goes straight to the consistency loss.
"""

from __future__ import annotations


class MemoryBank:
    def __init__(self, confident_after: int = 5):
        self.confident_after = confident_after
        self.counters: dict[str, int] = {}
        self.first_confident_epoch: dict[str, int] = {}
        self.uncertainty: dict[str, float] = {}

    def counter(self, key: str) -> int:
        return self.counters.get(key, 0)

    def is_consistently_confident(self, key: str) -> bool:
        return self.counter(key) >= self.confident_after

    def mark_suitable(self, key: str, epoch: int) -> None:
        self.counters[key] = self.counter(key) + 1
        self.first_confident_epoch.setdefault(key, epoch)

    def n_consistently_confident(self) -> int:
        return sum(1 for c in self.counters.values() if c >= self.confident_after)

    def state_dict(self) -> dict:
        return {
            "confident_after": self.confident_after,
            "counters": dict(self.counters),
            "first_confident_epoch": dict(self.first_confident_epoch),
            "uncertainty": dict(self.uncertainty),
        }

    def load_state_dict(self, state: dict) -> None:
        self.confident_after = int(state["confident_after"])
        self.counters = {k: int(v) for k, v in state["counters"].items()}
        self.first_confident_epoch = {k: int(v) for k, v in state["first_confident_epoch"].items()}
        self.uncertainty = {k: float(v) for k, v in state.get("uncertainty", {}).items()}
