"""Bad input through the real `ls-bench` command: each case stops before any training, exits
non-zero, names the field and the value, and prints no Python traceback.

Two kinds of message:
- "hydra": Hydra's own composition errors (misspelt key, wrong type, unknown group option) are
  multi-line but have no traceback; the field must appear in them.
- "line": our own checks (ls_bench.config.ConfigError and friends) print exactly one non-empty
  line on stderr, `ls-bench: error: <field>=<value> is invalid: <what is allowed>`.

Every case is its own process running `ls_bench.cli.main` with the case's argv. A fresh
interpreter costs 3-5 s of imports (torch, torchvision, tensorboard, sklearn), so a driver process
imports them once and forks one child per case, three at a time (fork keeps the child's exit
status, stdout and stderr its own). The parametrized tests only read the results;
`test_fresh_interpreter_matches_the_forked_driver` runs a few cases as real `python -m ls_bench.cli`
commands to show the driver changes nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from conftest import REPO, TINY, run_cli

# torchvision 0.29 deprecates torchvision.io in favour of TorchCodec; write_png still works.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def image_tree(root: Path, train: tuple[str, ...] = ("a", "b"), test: tuple[str, ...] = ("a", "b"),
               n: int = 3) -> Path:
    """ROOT/{train,test}/<class>/<i>.png: tiny 8x8 RGB images, a valid ImageFolder tree."""
    g = torch.Generator().manual_seed(0)
    for split, classes in (("train", train), ("test", test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                write_png(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g), str(d / f"{i}.png"))
    return root


def build_trees(base: Path) -> dict[str, Path]:
    t = {"file": base / "a_file.txt"}
    t["file"].write_text("not a folder")
    t["empty"] = base / "empty"
    t["empty"].mkdir()
    t["no_test"] = base / "no_test"
    (t["no_test"] / "train" / "a").mkdir(parents=True)
    t["no_classes"] = base / "no_classes"
    (t["no_classes"] / "train").mkdir(parents=True)
    (t["no_classes"] / "test").mkdir()
    t["no_images"] = base / "no_images"
    for s in ("train", "test"):
        (t["no_images"] / s / "a").mkdir(parents=True)
    t["mismatch"] = image_tree(base / "mismatch", test=("a", "c"))
    t["corrupt"] = image_tree(base / "corrupt")
    (t["corrupt"] / "train" / "b" / "broken.jpg").write_bytes(os.urandom(512))  # random bytes, not a JPEG
    t["zero_byte"] = image_tree(base / "zero_byte")
    (t["zero_byte"] / "test" / "b" / "empty.png").write_bytes(b"")  # a truncated download
    t["dangling"] = image_tree(base / "dangling")
    (t["dangling"] / "train" / "a" / "gone.png").symlink_to(base / "does-not-exist.png")  # unreadable
    return t


# (id, kind, overrides, strings the message must contain: the field, the value, ...)
Case = tuple[str, str, list[str], list[str]]
CONFIG_CASES: list[Case] = [
    # Hydra's composition errors: misspelt keys and groups, wrong types, unknown options.
    ("misspelt_key", "hydra", ["loss.epsilonn=0.1"], ["loss.epsilonn"]),
    ("misspelt_group", "hydra", ["los.epsilon=0.1"], ["los"]),
    ("wrong_type_float", "hydra", ["loss.gamma=abc"], ["loss.gamma", "abc", "Float"]),
    ("epsilon_not_a_number", "line", ["loss.epsilon=abc"], ["loss.epsilon='abc'", "a list of K numbers"]),
    ("wrong_type_int", "hydra", ["trainer.epochs=1.5"], ["trainer.epochs", "1.5", "Integer"]),
    ("wrong_type_bool", "hydra", ["trainer.checkpoint=maybe"], ["trainer.checkpoint", "maybe"]),
    ("unknown_loss", "hydra", ["loss=label_smothing"], ["loss/label_smothing", "label_smoothing"]),
    ("unknown_model", "hydra", ["model=resnet999"], ["model/resnet999", "resnet20"]),
    ("unknown_dataset", "hydra", ["data=mnist"], ["data/mnist", "cifar10"]),
    # Our checks on the config alone (ls_bench.config.validate).
    ("appended_misspelt_key", "line", ["+loss.epsilonn=0.1"], ["loss.epsilonn=0.1", "not a field"]),
    ("model_name", "line", ["model.name=foo"], ["model.name='foo'", "resnet20"]),
    ("dataset_name", "line", ["data.name=mnist"], ["data.name='mnist'", "cifar10"]),
    ("epsilon_above_1", "line", ["loss.epsilon=1.5"], ["loss.epsilon=1.5", "[0, 1)"]),
    ("epsilon_negative", "line", ["loss.epsilon=-0.1"], ["loss.epsilon=-0.1", "[0, 1)"]),
    ("lr_zero", "line", ["optim.lr=0"], ["optim.lr=0.0", "> 0"]),
    ("lr_negative", "line", ["optim.lr=-1"], ["optim.lr=-1.0", "> 0"]),
    ("momentum_1", "line", ["optim.momentum=1.0"], ["optim.momentum=1.0", "[0, 1)"]),
    ("batch_size_0", "line", ["trainer.batch_size=0"], ["trainer.batch_size=0", ">= 1"]),
    ("epochs_0", "line", ["trainer.epochs=0"], ["trainer.epochs=0", ">= 1"]),
    ("warmup_too_long", "line", ["sched.warmup_epochs=5"], ["sched.warmup_epochs=5.0", "trainer.epochs=1"]),
    ("n_bins_0", "line", ["metrics.n_bins=0"], ["metrics.n_bins=0", ">= 1"]),
    ("noise_rate_1", "line", ["data.label_noise.rate=1.0"], ["data.label_noise.rate=1.0", "[0, 1)"]),
    ("noise_kind", "line", ["data.label_noise.kind=pairwise"], ["data.label_noise.kind='pairwise'", "symmetric"]),
    ("val_size_negative", "line", ["data.val_size=-1"], ["data.val_size=-1", ">= 0"]),
    ("precision", "line", ["trainer.precision=fp8"], ["trainer.precision='fp8'", "bf16"]),
    ("device", "line", ["trainer.device=tpu"], ["trainer.device='tpu'", "cuda"]),
    ("penultimate_two_classes", "line", ["metrics.penultimate_classes=[0,1]"],
     ["metrics.penultimate_classes=[0, 1]", "three different labels"]),
    # Checks that need the data (run.setup, data.load_dataset, train.fit before the loop).
    ("val_size_too_big", "line", ["data.val_size=5000"], ["data.val_size=5000", "1437 training images"]),
    ("train_size_too_big", "line", ["data.train_size=100000"], ["data.train_size=100000", "<="]),
    ("test_size_too_big", "line", ["data.test_size=2000"], ["data.test_size=2000", "1797"]),
    ("class_out_of_range", "line", ["data.classes=[0,10]"], ["data.classes=[0, 10]", "[0, 10)"]),
    ("binary_with_10_classes", "line", ["loss=binary"], ["loss.name='binary'", "2 classes", "10"]),
    ("prior_wrong_length", "line", ["loss.prior=[0.5,0.5]"], ["loss.prior=[0.5, 0.5]", "K=10"]),
    ("top5_with_3_classes", "line", ["metrics.top_k=5", "data.classes=[0,1,2]", "data.val_size=30"],
     ["metrics.top_k=5", "3 classes"]),
    ("penultimate_class_out_of_range", "line", ["metrics.penultimate_classes=[0,1,10]"],
     ["metrics.penultimate_classes=[0, 1, 10]", "< the 10 classes of digits"]),
    ("fp16_on_cpu", "line", ["trainer.device=cpu", "trainer.precision=fp16"], ["trainer.precision='fp16'", "CPU"]),
    ("imagefolder_without_root", "line", ["data=imagefolder"],
     ["data.root=None", "must be set for data=imagefolder"]),
]


def cases(t: dict[str, Path], tmp: Path) -> list[Case]:
    """CONFIG_CASES and the cases that need the trees made in `t` or a path below `tmp`."""
    folder = ["data=imagefolder", "data.val_size=2", f"data.cache_dir={tmp / 'cache'}"]
    return [*CONFIG_CASES,
        ("cifar_not_there", "line", ["data=cifar10", f"data.root={tmp / 'no-cifar'}", "data.download=false"],
         ["data.root=", "no-cifar", "cifar10 files not found"]),
        # Image folders.
        ("root_missing", "line", [*folder, f"data.root={tmp / 'nowhere'}"], ["data.root=", "nowhere", "directory"]),
        ("root_is_a_file", "line", [*folder, f"data.root={t['file']}"], ["data.root=", "a_file.txt", "directory"]),
        ("root_empty", "line", [*folder, f"data.root={t['empty']}"], ["data.root=", "missing folder", "train"]),
        ("root_without_test", "line", [*folder, f"data.root={t['no_test']}"], ["data.root=", "missing folder", "test"]),
        ("no_class_folders", "line", [*folder, f"data.root={t['no_classes']}"], ["data.root", "no_classes/train"]),
        ("class_folders_empty", "line", [*folder, f"data.root={t['no_images']}"], ["data.root", "no images"]),
        ("class_mismatch", "line", [*folder, f"data.root={t['mismatch']}"], ["data.root=", "['a', 'b']", "['a', 'c']"]),
        # A damaged image: the message names the file.
        ("corrupt_jpg", "line", [*folder, f"data.root={t['corrupt']}"],
         ["data.root", str(t["corrupt"] / "train/b/broken.jpg")]),
        ("zero_byte_png", "line", [*folder, f"data.root={t['zero_byte']}"],
         ["data.root", str(t["zero_byte"] / "test/b/empty.png")]),
        ("dangling_symlink", "line", [*folder, f"data.root={t['dangling']}"],
         ["data.root", str(t["dangling"] / "train/a/gone.png")]),
        # Output folders that cannot be written (tests run as root, who ignores permission bits:
        # a path below a regular file fails for everyone).
        ("run_dir_below_a_file", "line", [f"hydra.run.dir={t['file']}/run"],
         ["hydra.run.dir=", "a_file.txt/run", "written"]),
        ("run_dir_is_a_file", "line", [f"hydra.run.dir={t['file']}"], ["hydra.run.dir=", "a_file.txt", "written"]),
        ("sweep_dir_below_a_file", "line", ["-m", f"hydra.sweep.dir={t['file']}/sweep", "seed=0,1"],
         ["hydra.sweep.dir=", "a_file.txt/sweep", "written"]),
    ]


# Imports once, then one forked child per case: sys.argv is the case's, stdout/stderr go to the
# case's files at the file-descriptor level, the child exits the way the console script would.
DRIVER = r"""
import atexit, gc, json, os, sys
import ls_bench.cli, ls_bench.train, ls_bench.data, sklearn.datasets, sklearn.model_selection, torchvision.io

out, jobs, width = sys.argv[1], json.load(sys.stdin), 3
gc.freeze()  # imported objects stay out of the children's garbage collections (fewer copied pages)
running, status = {}, {}
for i, argv in enumerate(jobs + [None] * width):
    while running and (argv is None or len(running) >= width):
        pid, st = os.wait()
        status[running.pop(pid)] = os.waitstatus_to_exitcode(st)
    if argv is None:
        continue
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(f"{out}/{i}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["ls-bench", *argv]
        try:
            ls_bench.cli.main()
            code = 0
        except SystemExit as e:  # what the interpreter would do with it
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else print(e.code, file=sys.stderr) or 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        atexit._run_exitfuncs()  # as at a normal exit (lock release, log flush) ...
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)  # ... minus tearing down torch's modules, which costs seconds per child
    running[pid] = i
json.dump(status, sys.stdout)
"""


def run_forked(argvs: list[list[str]], out: Path) -> list[subprocess.CompletedProcess]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    drv = subprocess.run([sys.executable, "-c", DRIVER, str(out)], input=json.dumps(argvs), capture_output=True,
                         text=True, timeout=600, env=env, cwd=REPO)
    assert drv.returncode == 0, drv.stderr
    codes = {int(k): v for k, v in json.loads(drv.stdout.strip().splitlines()[-1]).items()}
    return [subprocess.CompletedProcess(a, codes[i], (out / f"{i}.out").read_text(), (out / f"{i}.err").read_text())
            for i, a in enumerate(argvs)]


Case = tuple[str, str, list[str], list[str]]
Result = tuple[str, list[str], list[str], subprocess.CompletedProcess, Path]


def argv(case: Case, tmp: Path) -> list[str]:
    """Flags first, then TINY, then the case (Hydra applies overrides in order: the case wins)."""
    name, _, args, _ = case
    out = [] if any(a.startswith("hydra.") for a in args) else [f"hydra.run.dir={tmp / 'runs' / name}"]
    return [*[a for a in args if a.startswith("-")], *TINY, *[a for a in args if not a.startswith("-")], *out]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


@pytest.fixture(scope="module")
def table(tmp: Path) -> list[Case]:
    return cases(build_trees(tmp), tmp)


DEBUG = ("debug_flag", "debug", ["--debug", "loss.epsilon=1.5"],
         ["Traceback", "ConfigError: loss.epsilon=1.5 is invalid"])


@pytest.fixture(scope="module")
def results(table: list[Case], tmp: Path) -> dict[str, Result]:
    everything = [*table, DEBUG]  # one driver for all: its start-up imports cost ~5 s
    procs = run_forked([argv(c, tmp) for c in everything], tmp / "io")
    return {c[0]: (c[1], c[2], c[3], p, tmp / "runs" / c[0]) for c, p in zip(everything, procs)}


def all_case_ids() -> list[str]:
    return [c[0] for c in cases({k: Path(k) for k in ("file", "empty", "no_test", "no_classes", "no_images", "mismatch",
                                                     "corrupt", "zero_byte", "dangling")}, Path("tmp"))]


@pytest.mark.parametrize("name", all_case_ids())
def test_bad_input_fails_cleanly(results: dict[str, Result], name: str) -> None:
    kind, args, expect, proc, run_dir = results[name]
    err = proc.stderr
    assert proc.returncode != 0, f"{args} was accepted:\n{err}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    for s in expect:
        assert s in err, f"{s!r} not in stderr of {args}:\n{err}"
    if kind == "line":
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("ls-bench: error: "), err
    # Stopped before any training: no epoch was logged and no checkpoint written.
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "last.pt").exists()


def test_fresh_interpreter_matches_the_forked_driver(table: list[Case], results: dict[str, Result],
                                                     tmp: Path) -> None:
    """A Hydra error, one of ours from the data and one from the output-folder check, as real commands."""
    picked = [c for c in table if c[0] in ("wrong_type_float", "corrupt_jpg", "run_dir_below_a_file")]
    fresh_tmp = tmp / "fresh"

    def run(case: Case) -> subprocess.CompletedProcess:
        args = [a.replace(str(tmp / "runs"), str(fresh_tmp)) for a in argv(case, tmp)]
        return run_cli(*args, timeout=240)

    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        fresh = list(pool.map(run, picked))
    for case, proc in zip(picked, fresh):
        forked = results[case[0]][3]
        assert (proc.returncode, proc.stderr) == (forked.returncode, forked.stderr), case[0]


def test_debug_flag_shows_the_traceback(results: dict[str, Result]) -> None:
    *_, proc, _ = results["debug_flag"]
    assert proc.returncode != 0
    for s in DEBUG[3]:
        assert s in proc.stderr, proc.stderr
