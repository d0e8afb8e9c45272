"""Files and config values are data: nothing pickled is executed, nothing in a config is eval'd,
instantiated or passed to a shell.

Each payload below is first shown to fire when loaded the unsafe way, so a test that passes
because the payload was broken is impossible.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_input import image_tree, run_forked

from conftest import REPO, TINY, make_config
from ls_bench.checkpoint import CheckpointError, load_checkpoint
from ls_bench.data import load_dataset
from ls_bench.errors import ConfigError
from ls_bench.train import fit

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


class Payload:
    """Unpickling this runs `touch <marker>` through the shell: the textbook pickle attack."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def armed(marker: Path) -> Payload:
    """A payload proven to work: the unsafe load of it creates the marker (then removed again)."""
    blob = pickle.dumps(Payload(marker))
    pickle.loads(blob)
    assert marker.exists(), "the payload does not fire; the tests below would prove nothing"
    marker.unlink()
    return Payload(marker)


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "last.pt"
    torch.save({"model": armed(marker), "epoch": 1}, ckpt)
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(ckpt))} cannot be loaded safely"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # what the refusal prevents
    assert marker.exists()


def test_malicious_imagefolder_cache_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "images")
    cfg = make_config("data=imagefolder", f"data.root={root}", "data.val_size=2",
                      f"data.cache_dir={tmp_path / 'cache'}").data
    first = load_dataset(cfg)
    caches = sorted((tmp_path / "cache").glob("imagefolder-*.pt"))
    assert len(caches) == 2  # train and test
    marker = tmp_path / "pwned"
    for c in caches:
        torch.save({"x": armed(marker), "y": torch.zeros(1)}, c)
    second = load_dataset(cfg)
    assert not marker.exists()
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)


def test_saved_predictions_hold_no_pickles_and_pickles_are_refused(tmp_path: Path) -> None:
    from ls_bench.report.plots import pooled_bins
    from ls_bench.report.runs import RunResult

    fit(make_config(*TINY), tmp_path / "run")
    with np.load(tmp_path / "run/predictions.npz", allow_pickle=False) as f:  # loads: plain arrays only
        assert all(f[k].dtype != object for k in f.files)
    bad = tmp_path / "bad"
    bad.mkdir()
    marker = tmp_path / "pwned"
    np.savez(bad / "predictions.npz", test_logits=np.array([armed(marker)], dtype=object),
             test_labels=np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        pooled_bins([RunResult(bad, {}, "done")])  # the report's reader
    assert not marker.exists()


@pytest.mark.parametrize("override", ["+loss._target_=os.system", "+_target_=os.system",
                                      "+data.label_noise._target_=builtins.eval"])
def test_target_in_an_override_is_rejected_by_the_schema(override: str) -> None:
    key = override[1:].split("=")[0]
    with pytest.raises(ConfigError, match=f"{re.escape(key)}=.* is invalid: not a field of the schema"):
        make_config(override)


def test_through_the_cli(tmp_path: Path) -> None:
    """A poisoned last.pt, an appended `_target_`, a CIFAR folder of pickles: refused, nothing runs."""
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": armed(marker)}, run_dir / "last.pt")
    cifar = tmp_path / "cifar" / "cifar-10-batches-py"  # torchvision unpickles these files after an MD5 check
    cifar.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (cifar / name).write_bytes(pickle.dumps(armed(marker)))
    procs = run_forked([
        [*TINY, f"hydra.run.dir={run_dir}"],
        [*TINY, "+loss._target_=os.system", f"hydra.run.dir={tmp_path / 'target'}"],
        [*TINY, "data=cifar10", f"data.root={cifar.parent}", "data.download=false", f"hydra.run.dir={tmp_path / 'c'}"],
    ], tmp_path / "io")
    expect = [f"checkpoint {run_dir / 'last.pt'} cannot be loaded safely", "loss._target_='os.system' is invalid",
              "cifar10 files not found"]
    for proc, text in zip(procs, expect):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and text in lines[0], proc.stderr
    assert not marker.exists()


def test_the_code_never_evaluates_config_or_unpickles() -> None:
    """A source scan: the guards above hold only if no other path loads or runs things."""
    forbidden = (r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"import pickle|from pickle|pickle\.loads?\(|\bdill\b",
                 r"shell=True", r"os\.system", r"os\.popen", r"\binstantiate\(", r"allow_pickle=True",
                 r"weights_only=False", r"yaml\.load\(", r"yaml\.unsafe_load", r"joblib\.load")
    for p in sorted((REPO / "ls_bench").rglob("*.py")):
        src, name = p.read_text(), p.relative_to(REPO)
        for pattern in forbidden:
            assert not re.search(pattern, src), f"{name} matches {pattern}"
        call_args = r"\((?:[^()]|\([^()]*\))*\)"  # the whole argument list, one level of nested calls inside
        for call in re.findall(r"torch\.load" + call_args, src):
            assert "weights_only=True" in call, f"{name}: {call}"
        for call in re.findall(r"np\.load" + call_args, src):
            assert "allow_pickle=False" in call, f"{name}: {call}"
        for first in re.findall(r"subprocess\.(?:run|Popen|call|check_call|check_output)\(\s*(\S)", src):
            assert first == "[", f"{name}: a subprocess gets a command string instead of an argument list"
    # The only `_target_`s in configs/ are Hydra's callback hooks for our own two callbacks.
    targets = [(p.name, line.strip()) for p in (REPO / "configs").rglob("*.yaml")
               for line in p.read_text().splitlines() if "_target_" in line and not line.strip().startswith("#")]
    assert targets == [("config.yaml", "_target_: ls_bench.cli.OutputGuard"),
                       ("config.yaml", "_target_: ls_bench.cli.SweepReport")]
