"""The machine a run executes on: device, precision, CPU threads, the allocator, the git commit.

None of this changes what a run computes on the CPU (bit-identical reruns need only the same
thread count); it decides where and how fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import subprocess
import traceback
from pathlib import Path

import torch

from ls_bench.errors import invalid


def cpu_features() -> str:
    """The CPU model and the flags that decide the speed of a step: AVX2, AVX512 (F, BF16, VNNI),
    AMX. Without avx512_bf16/amx_bf16 there is no native bf16: precision=auto is fp32 (~3x slower)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(f for f in wanted if f in flags) or 'none of these'}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise invalid("trainer.device", name, "auto or cpu: no CUDA device is available here")
    if name.startswith("cuda:"):
        n = torch.cuda.device_count()
        index = name.split(":", 1)[1]
        if not (index.isdigit() and int(index) < n):
            raise invalid("trainer.device", name, f"cuda or cuda:0 ... cuda:{n - 1} on this machine")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Native bf16 on the CPU (AVX512-BF16 or AMX); without it bf16 autocast is slower than fp32.

    False also where PyTorch and oneDNN are held to AVX2 (ATEN_CPU_CAPABILITY=avx2 or default,
    ONEDNN_MAX_CPU_ISA=AVX2 or lower): how an AVX512 machine stands in for an AVX2-only one.
    """
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2") or \
            os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2", "AVX2_VNNI"):
        return False
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. auto: bf16 where native, fp16 on older GPUs, else fp32."""
    if name == "fp32":
        return None
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if gpu_has_bf16(device) else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if name == "fp16" and device.type == "cpu":
        raise invalid("trainer.precision", name, "bf16, fp32 or auto on the CPU (fp16 autocast is for CUDA)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def gpu_has_bf16(device: torch.device) -> bool:
    """Native bf16 on the GPU: compute capability 8.0 (Ampere) or newer. torch.cuda.is_bf16_supported()
    also counts emulation (True on a T4 or an RTX 20xx, where bf16 runs emulated and slowly), so
    `auto` would never pick fp16 + GradScaler there."""
    return torch.cuda.get_device_capability(device)[0] >= 8


PRECISIONS = {"fp32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # precision_name -> dtype


def precision_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def configure_backends(device: torch.device, dtype: torch.dtype | None, deterministic: bool) -> dict[str, object]:
    """Process-wide numerics for this run, returned for run_info.json.

    fp32 means float32: on Ampere and newer, cuDNN convolutions use TF32 by default
    (cudnn.allow_tf32) and so would matmuls at any precision below "highest", so fp32 runs turn
    TF32 off. `deterministic`: deterministic algorithms, cudnn.benchmark off (and the caller draws
    label_flip's numbers on the CPU). Set on every run, since a sweep's jobs share one process."""
    cuda = device.type == "cuda"
    tf32 = cuda and dtype is not None  # mixed precision: TF32 for the few fp32 ops is harmless
    torch.backends.cudnn.allow_tf32 = tf32 or not cuda  # PyTorch's default where it does not matter
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # "highest" also turns matmul TF32 off
    torch.backends.cudnn.benchmark = cuda and not deterministic
    if deterministic and cuda:  # cuBLAS needs a fixed workspace for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark, "deterministic_algorithms": deterministic,
            "tf32": tf32, "float32_matmul_precision": torch.get_float32_matmul_precision()}


def pick_gpu(job_num: int | None, visible: int) -> str:
    """The GPU of a sweep job: job number modulo the visible GPUs, so the joblib launcher's
    parallel jobs spread over the GPUs instead of all landing on cuda:0."""
    return "cuda" if job_num is None or visible <= 1 else f"cuda:{job_num % visible}"


def device_for_job(device: str, job_num: int | None) -> str:
    """trainer.device for a job: `auto` with several visible GPUs gives each sweep job its own
    (job number modulo their count); anything else is kept as given."""
    if device != "auto" or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return device
    return pick_gpu(job_num, torch.cuda.device_count())


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA out of memory, including cuBLAS/cuDNN allocation failures, which are plain RuntimeErrors."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
        "CUDNN_STATUS_NOT_INITIALIZED"))


def release_failed_run(e: BaseException | None) -> None:
    """Drop what a failed run's exception keeps alive: Hydra's launcher stores each job's exception,
    whose traceback frames hold the model, the optimiser and the data on the device, so the next
    job of a sequential sweep would run out of memory too."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_threads(n: int) -> int:
    """Threads for this process: n, or all cores divided among parallel jobs (LS_BENCH_JOBS)."""
    if n == 0:
        jobs = max(1, int(os.environ.get("LS_BENCH_JOBS", "1")))
        # The cores this process may run on (a SLURM allocation, taskset), not all of the node's.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        n = max(1, cores // jobs)
    torch.set_num_threads(n)
    return n


def tune_allocator() -> bool:
    """Keep freed activation memory in glibc's heap instead of returning it to the kernel.

    By default glibc serves blocks over 128 KiB (raised dynamically up to 32 MiB) with fresh
    mmap()s and trims the heap top back to the kernel, so every training step touches megabytes
    of new pages: ~5,000 page faults and ~20 MiB of kernel page-zeroing per ResNet-20 step at
    batch 128. A fixed 32 MiB mmap threshold, a 1 GiB trim threshold and a 64 MiB top pad reuse
    those pages (~300 faults per step) and make a CPU step ~10% faster, in bf16 and fp32 alike
    (2 cores: 92-97 -> 84-85 ms per bf16 step). The same settings as MALLOC_MMAP_THRESHOLD_
    etc. in the environment, but set in-process.
    Returns False where the C library is not glibc (macOS, musl), where nothing is changed.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))


def git_commit() -> str | None:
    """The commit of the ls-bench source tree, or None outside a git checkout (a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
