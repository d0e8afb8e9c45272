"""What runs differently on a GPU, tested on the CPU as far as the CPU allows: full-precision
evaluation logits, TF32 off for fp32, `auto` by compute capability, resuming in the saved
precision, out-of-memory as one line that frees the job's tensors, deterministic mode, one GPU
per job, and no per-step copies of constants. scripts/gpu_check.py checks the rest on a GPU."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_config
from ls_bench import machine
from ls_bench.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ls_bench.errors import RunFailed
from ls_bench.evaluate.metrics import compute_metrics
from ls_bench.run import predict, setup
from ls_bench.train import fit


def test_bf16_evaluation_keeps_the_logits_in_float32(tmp_path: Path) -> None:
    """Under bf16 autocast the body runs in bf16 but the head in fp32: the saved logits are not
    bf16 values, and they equal an fp32 head applied to the same (bf16) features."""
    fit(make_config(*TINY, "trainer.precision=bf16", "metrics.figures=false"), tmp_path)
    with np.load(tmp_path / "predictions.npz") as p:
        z = torch.from_numpy(p["test_logits"])
    assert not torch.equal(z, z.bfloat16().float())  # logits rounded to bf16 would all survive this

    run = setup(make_config(*TINY, "trainer.precision=bf16"))
    amp = run.amp()
    z_eval = predict(run.model, run.ds.test, 1000, run.norm, amp)
    feats = predict(run.model, run.ds.test, 1000, run.norm, amp, features=True)
    with torch.inference_mode():
        z_ref = run.model.head(feats)  # fp32 head, outside autocast
    assert torch.allclose(z_eval, z_ref, rtol=1e-6, atol=1e-6)
    y = run.ds.test.y
    ref, got = compute_metrics(z_ref, y), compute_metrics(z_eval, y)
    assert all(got[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-7) for k in ref)


@pytest.fixture
def restore_backends():
    yield
    machine.configure_backends(torch.device("cpu"), None, False)  # the CPU defaults again


@pytest.mark.parametrize("dtype,tf32,matmul", [(None, False, "highest"), (torch.bfloat16, True, "high")])
def test_fp32_on_cuda_means_float32_no_tf32(restore_backends, dtype, tf32, matmul) -> None:
    got = machine.configure_backends(torch.device("cuda"), dtype, deterministic=False)  # flags only: no CUDA call
    assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.get_float32_matmul_precision() == matmul and torch.backends.cudnn.benchmark is True
    assert got == {"cudnn_benchmark": True, "deterministic_algorithms": False, "tf32": tf32,
                   "float32_matmul_precision": matmul}


def test_deterministic_mode_turns_benchmark_off_and_records_it(restore_backends, tmp_path: Path) -> None:
    got = machine.configure_backends(torch.device("cuda"), None, deterministic=True)
    assert got["cudnn_benchmark"] is False and torch.are_deterministic_algorithms_enabled()
    machine.configure_backends(torch.device("cpu"), None, False)
    args = (*TINY, "loss=label_flip", "loss.epsilon=0.2", "metrics.figures=false")
    plain = fit(make_config(*args), tmp_path / "plain")
    exact = fit(make_config(*args, "trainer.deterministic=true"), tmp_path / "exact")
    fit(make_config(*args), tmp_path / "next")  # each run sets it: a sweep's next job is not left deterministic
    assert not torch.are_deterministic_algorithms_enabled()
    drop = ("time_s",)
    assert {k: v for k, v in exact.items() if k not in drop} == {k: v for k, v in plain.items() if k not in drop}
    info = json.loads((tmp_path / "exact/run_info.json").read_text())
    assert info["determinism"]["deterministic_algorithms"] is True


@pytest.mark.parametrize("capability,expect", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                               ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_auto_precision_on_a_gpu_goes_by_compute_capability(monkeypatch, capability, expect) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # torch's answer on a T4:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert machine.resolve_precision("auto", torch.device("cuda")) == expect


def _half_done(tmp_path: Path, *args: str) -> Path:
    """A run directory whose last.pt holds epoch 1 of 2 (trained with bf16 autocast)."""
    run = tmp_path / "run"
    fit(make_config(*args), run)
    state = load_checkpoint(run / "last.pt")
    state["epoch"], state["history"] = 1, state["history"][:1]
    save_checkpoint(run / "last.pt", state)
    (run / "final.json").unlink()
    return run


def test_resume_under_auto_reuses_the_saved_precision(tmp_path: Path, monkeypatch) -> None:
    args = ("trainer.epochs=2", "trainer.progress=false", "metrics.figures=false")
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)  # the machine it started on: auto = bf16
    run = _half_done(tmp_path, *args)
    assert load_checkpoint(run / "last.pt")["precision"] == "bfloat16"
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)  # resumed where auto = fp32
    fit(make_config(*args), run)
    assert load_checkpoint(run / "last.pt")["precision"] == "bfloat16"  # epoch 2 ran in bf16 too


def test_resume_in_a_precision_that_cannot_run_here_is_refused(tmp_path: Path) -> None:
    args = ("trainer.epochs=2", "trainer.progress=false", "metrics.figures=false", "trainer.precision=fp32")
    run = _half_done(tmp_path, *args)
    state = load_checkpoint(run / "last.pt")
    state["precision"], state["device_type"] = "float16", "cuda"  # as if started on an older GPU
    save_checkpoint(run / "last.pt", state)
    with pytest.raises(CheckpointError) as e:
        fit(make_config(*args), run)
    assert "was trained in float16 on cuda, this run would use fp32 on cpu" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("message,oom", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
    ("mat1 and mat2 shapes cannot be multiplied (64x10 and 12x3)", False),
])
def test_cublas_and_cudnn_allocation_failures_count_as_out_of_memory(message: str, oom: bool) -> None:
    assert machine.is_out_of_memory(RuntimeError(message)) is oom


def test_out_of_memory_while_setting_up_is_one_line_and_frees_the_run(tmp_path: Path, monkeypatch) -> None:
    """An OOM before the first step (moving the model to the device) is recorded like any failure,
    and once release_failed_run has cleared the exception's frames the model is gone."""
    import ls_bench.run as run_module

    made: list[weakref.ref] = []
    real_build = run_module.build_model

    def build_then_fail(*args, **kwargs):
        model = real_build(*args, **kwargs)
        made.append(weakref.ref(model))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(run_module, "build_model", build_then_fail)
    with pytest.raises(RunFailed) as e:
        fit(make_config(*TINY), tmp_path)
    assert str(e.value).startswith("epoch 1: out of GPU memory (CUDA out of memory") and "batch_size" in str(e.value)
    assert json.loads((tmp_path / "failed.json").read_text())["type"] == "RunFailed"
    machine.release_failed_run(e.value)
    gc.collect()
    assert made and made[0]() is None


def test_each_sweep_job_gets_its_own_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [machine.device_for_job("auto", n) for n in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert machine.device_for_job("auto", None) == "cuda"  # a single run
    assert machine.device_for_job("cuda:2", 0) == "cuda:2" and machine.device_for_job("cpu", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert machine.device_for_job("auto", 4) == "auto"


def test_loss_constants_live_on_the_device_and_a_step_copies_none(monkeypatch) -> None:
    """Every constant tensor of the loss is placed on the run's device once, in setup(); the steps
    never call .to() on one of them (on a GPU each such call is a host-to-device copy that waits)."""
    from ls_bench.data.loader import train_batches
    from ls_bench.train import train_one_epoch

    run = setup(make_config(*TINY, "loss.prior=class_prior", "loss.class_weights=balanced", "loss.epsilon=0.1"))
    constants = [run.criterion.target.prior, run.criterion.weight]
    assert all(t is not None and t.device == run.device for t in constants)
    moved, real_to = [], torch.Tensor.to

    def spy(self, *args, **kwargs):
        if any(self is c for c in constants):
            moved.append(args)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    batches = list(train_batches(run.ds.train, 64, 0, False, run.norm))[:3]
    run.steps_per_epoch = 3
    train_one_epoch(run, batches, torch.Generator().manual_seed(0), "spy")
    assert moved == []
    assert run.criterion.to(run.device).weight.data_ptr() == run.criterion.weight.data_ptr()  # same device: no copy


def test_compile_accepts_torch_compile_modes_and_refuses_others() -> None:
    from ls_bench.errors import ConfigError

    assert make_config("trainer.compile=reduce-overhead").trainer.compile == "reduce-overhead"
    assert make_config("trainer.compile=true").trainer.compile is True
    with pytest.raises(ConfigError, match="trainer.compile='fast' is invalid: false, true, default, reduce-overhead"):
        make_config("trainer.compile=fast")
