"""Which CPU backend torch actually uses on this machine (`python -m tsr.core.backend`).

The same image is built for linux/amd64 and linux/arm64, and the two get different math
libraries (MKL + oneDNN on x86, OpenBLAS/NVPL + oneDNN with the Arm Compute Library on arm64),
different SIMD levels and, in a pod, a CPU quota that may differ from the node's core count.
This report makes that visible in build logs (the Dockerfiles run it) and in a running pod.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

# Build settings worth a line of their own; everything else from torch.__config__.show() stays under "build_settings".
KEY_SETTINGS = (
    "BLAS_INFO",
    "LAPACK_INFO",
    "USE_MKL",
    "USE_MKLDNN",
    "USE_MKLDNN_ACL",
    "USE_OPENMP",
    "USE_NNPACK",
    "USE_CUDA",
    "TORCH_VERSION",
)
# Thread-related environment variables that change what torch does at run time.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")

_SETTING_RE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
_MATH_LIB_RE = re.compile(r"arm_compute|blas|lapack|mkl|dnnl|gomp|iomp|gfortran")
_PARALLEL_RE = re.compile(r"^\s*([\w:]+\(\))\s*:\s*(.+?)\s*$")


def parse_build_settings(config: str) -> dict[str, str]:
    """KEY=VALUE pairs of the "Build settings:" line of `torch.__config__.show()`.

    Pairs are separated by ", "; values such as CUDA_FLAGS contain bare commas and CXX_FLAGS
    contains spaces, but neither contains ", ", so that separator is unambiguous.
    """
    for line in config.splitlines():
        line = line.strip().removeprefix("- ")
        if not line.startswith("Build settings:"):
            continue
        settings: dict[str, str] = {}
        for item in line.removeprefix("Build settings:").split(", "):
            match = _SETTING_RE.match(item.strip())
            if match:
                settings[match.group(1)] = match.group(2).strip().rstrip(",")
        return settings
    return {}


def parse_libraries(config: str) -> list[str]:
    """The "- ..." lines of `torch.__config__.show()` (compiler, MKL, oneDNN, OpenMP, ACL, CPU capability)."""
    return [
        line.strip().removeprefix("- ").strip()
        for line in config.splitlines()
        if line.strip().startswith("- ") and not line.strip().startswith("- Build settings:")
    ]


def parse_parallel_info(info: str) -> dict[str, Any]:
    """`torch.__config__.parallel_info()` as a dict: the `*_threads()` counts and the ATen parallel backend."""
    result: dict[str, Any] = {}
    for line in info.splitlines():
        if line.startswith("ATen parallel backend:"):
            result["backend"] = line.split(":", 1)[1].strip()
            continue
        match = _PARALLEL_RE.match(line)
        if match:
            value = match.group(2)
            result[match.group(1)] = int(value) if value.isdigit() else value
    return result


def bundled_math_libs(lib_dir: Path) -> list[str]:
    """Math/threading libraries shipped inside the torch wheel (MKL, OpenBLAS, NVPL, Arm Compute Library, OpenMP)."""
    if not lib_dir.is_dir():
        return []
    return sorted(p.name for p in lib_dir.iterdir() if _MATH_LIB_RE.search(p.name))


# /proc/cpuinfo flags of CPUs that compute in bfloat16 natively: x86's AVX512-BF16 and AMX, arm64's BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text ("flags" on x86, "Features" on arm64)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return set(value.split())
    return set()


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 instructions: where it has none, oneDNN emulates bf16 and training under
    bf16 autocast gets slower, not faster, so `precision="auto"` trains in float32 there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return bool(cpu_flags(cpuinfo) & BF16_CPU_FLAGS)


def backend_report() -> dict[str, Any]:
    """Everything that decides CPU inference speed: arch, torch build, math libraries, SIMD level, threads."""
    import torch

    config = torch.__config__.show()
    settings = parse_build_settings(config)
    # A local version label tells the wheel flavour: "+cpu" from the CPU index, "+cu130" etc. from a CUDA index;
    # PyPI's default wheels carry none (and on linux are CUDA builds, see USE_CUDA).
    local_label = torch.__version__.partition("+")[2]
    libs = bundled_math_libs(Path(torch.__file__).parent / "lib")
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_wheel_variant": local_label or "none",
        "cuda_build": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkl_available": torch.backends.mkl.is_available(),
        "openmp_available": torch.backends.openmp.is_available(),
        # torch 2.14's build settings have no ACL key on every build, so the bundled library is the evidence.
        "acl": settings.get("USE_MKLDNN_ACL", "").upper() in {"ON", "1"} or any("arm_compute" in n for n in libs),
        "bundled_math_libs": libs,
        "build": {key: settings[key] for key in KEY_SETTINGS if key in settings},
        "build_settings": {key: value for key, value in settings.items() if not key.endswith("_FLAGS")},
        "libraries": parse_libraries(config),
        "parallel": parse_parallel_info(torch.__config__.parallel_info()),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "os_cpu_count": os.cpu_count(),
        "sched_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
    }


def summary(report: dict[str, Any]) -> str:
    """One line for humans and build logs."""
    build = report["build"]
    return (
        f"{report['machine']} torch {report['torch']} cpu={report['cpu_capability']} "
        f"blas={build.get('BLAS_INFO', '?')} lapack={build.get('LAPACK_INFO', '?')} "
        f"mkldnn={report['mkldnn_available']} acl={report['acl']} mkl={report['mkl_available']} "
        f"openmp={report['openmp_available']} cuda={report['cuda_build'] or 'no'} threads={report['num_threads']}"
    )


def main() -> int:
    report = backend_report()
    print(json.dumps(report, indent=2, sort_keys=True))
    print(summary(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
