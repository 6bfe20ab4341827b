"""What a run's device decides besides where tensors live: its name, its free memory, the
arithmetic of fp32, and which precisions its recurrent kernels really run in.

On a GPU, three of torch's defaults would make a run other than its config says:

- cuDNN computes fp32 recurrences and convolutions in TF32 (`torch.backends.cudnn.allow_tf32`
  is True by default): about 1e-3 relative error per product. `exact_fp32` turns TF32 off
  for cuDNN and for matmuls, so fp32 is IEEE fp32 on every device, and a run's summary says
  which arithmetic was in force (`fp32_precision`).
- torch's autocast wrapper for cuDNN recurrences casts to float16 whatever dtype autocast was
  given (aten/src/ATen/native/cudnn/AutocastRNN.cpp), so a bf16 LSTM would be an unscaled
  fp16 one; `check_precision` refuses it.
- random draws on the device come from another generator (Philox) than the CPU's (mt19937);
  every task draws its data on the CPU and moves it (gradlab.tasks), so a seed is one data
  stream on every device.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import subprocess

import torch

from gradlab.errors import bad

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype
UNKNOWN = 1 << 62  # free memory that could not be read: no limit


def name(device: torch.device) -> str:
    """`NVIDIA H200`, `cpu (x86_64)`: what a summary and a benchmark say the run ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def autocast(precision: str, device: torch.device):
    """() -> the precision context of a forward pass: autocast to `precision`'s dtype, or, under
    fp32, no context at all (a disabled autocast still costs per call)."""
    if precision == "fp32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=DTYPES[precision])


def kind(device: torch.device) -> str:
    """What engine=auto's measured figures are keyed by: `cpu` (any CPU), or the GPU's name."""
    return "cpu" if device.type == "cpu" else name(device)


def exact_fp32() -> None:
    """IEEE fp32 for fp32 tensors in matmuls and cuDNN (recurrences, convolutions): no TF32.
    Process-wide, as torch's flags are; the CPU ignores both."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def fp32_precision() -> str:
    """The arithmetic fp32 products get now: `ieee`, or `tf32` where either flag allows it."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32 else "ieee"


def check_precision(precision: str, model: torch.nn.Module, device: torch.device) -> None:
    """Refuse, in one line, a precision that a recurrent module of `model` would not run in on
    `device`: bf16 on a GPU (cuDNN's autocast makes it fp16), or one the CPU's recurrent kernels
    cannot run (fp16 LSTMs on CPUs whose oneDNN has no fp16 LSTM), found by a tiny trial."""
    recurrent = next((m for m in model.modules() if isinstance(m, torch.nn.RNNBase)), None)
    if precision == "fp32" or recurrent is None:
        return
    kind = type(recurrent).__name__
    if device.type == "cuda":
        if precision == "bf16" and torch.backends.cudnn.enabled:
            raise bad(
                "precision",
                precision,
                f"torch's autocast runs cuDNN's {kind} in float16, not bfloat16, on "
                f"a GPU (unscaled); use precision=fp16 (float16 with loss scaling) or fp32",
            )
        return
    failure = cpu_trial(type(recurrent), precision)
    if failure:
        raise bad(
            "precision",
            precision,
            f"torch cannot run {kind} in {precision} on this CPU ({failure}); use precision=fp32 or bf16",
        )


@functools.cache
def cpu_trial(cell: type, precision: str) -> str | None:
    """A forward and backward of a tiny `cell` under the precision's autocast on the CPU; the
    error's first line if it fails, else None."""
    module = cell(2, 2, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=DTYPES[precision]):
            out, _ = module(torch.randn(1, 3, 2))
        out.float().sum().backward()
    except RuntimeError as e:
        return str(e).splitlines()[0].split(". ")[0]  # its first sentence
    return None


def free_memory(device: torch.device) -> int:
    """Bytes free on the device: the GPU's, or the machine's (MemAvailable). A process that has
    not used its GPU yet asks the driver (nvidia-smi) rather than open a CUDA context for it:
    the process that plans a sweep for workers would otherwise hold GPU memory all along."""
    if device.type == "cuda":
        if torch.cuda.is_initialized():
            return torch.cuda.mem_get_info(device)[0]
        return _driver_free(device.index or 0)
    try:
        meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        return int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return UNKNOWN


def _driver_free(index: int) -> int:
    """nvidia-smi's free memory of this process's GPU `index` (CUDA_VISIBLE_DEVICES mapped)."""
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gpu = visible[index].strip() if index < len(visible) else str(index)
    if not shutil.which("nvidia-smi"):
        return UNKNOWN
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={gpu}", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return int(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return UNKNOWN
