"""Seeds are an axis: every random stream of a run derives from the top-level `seed`.

Runs that differ only in the loss (ε, prior, label_flip, mixing, a teacher) draw the same initial
weights and the same batches, so their metrics can be compared seed by seed (paired).
"""

from __future__ import annotations

import hashlib

from ls_bench.config import Config


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed per named stream, so streams never share random numbers."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "little") >> 1


def run_seeds(cfg: Config) -> dict[str, int]:
    """The run's streams: model initialisation, batch order + augmentation, label noise."""
    def pick(given: int | None, stream: str) -> int:
        return given if given is not None else derive_seed(cfg.seed, stream)

    return {"init": pick(cfg.seeds.init, "init"), "data": pick(cfg.seeds.data, "data"),
            "noise": pick(cfg.data.label_noise.seed, "noise")}
