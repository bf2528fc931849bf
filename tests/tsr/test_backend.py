"""The backend report against torch's own APIs (real torch, no expectations about this machine)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import torch

from tsr.core.backend import backend_report, cpu_flags, native_bf16, parse_build_settings, parse_parallel_info, summary
from tsr.local.checkout import REPO_ROOT

EXPECTED_KEYS = {
    "machine",
    "python",
    "torch",
    "torch_wheel_variant",
    "cuda_build",
    "cpu_capability",
    "native_bf16",
    "mkldnn_available",
    "mkl_available",
    "openmp_available",
    "acl",
    "bundled_math_libs",
    "build",
    "build_settings",
    "libraries",
    "parallel",
    "num_threads",
    "num_interop_threads",
    "os_cpu_count",
    "sched_cpus",
    "thread_env",
}


def test_report_matches_torch_apis() -> None:
    report = backend_report()
    assert set(report) == EXPECTED_KEYS
    assert report["machine"] == platform.machine()
    assert report["torch"] == torch.__version__
    assert report["cuda_build"] == torch.version.cuda
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["mkldnn_available"] is torch.backends.mkldnn.is_available()
    assert report["mkl_available"] is torch.backends.mkl.is_available()
    assert report["openmp_available"] is torch.backends.openmp.is_available()
    assert report["num_threads"] == torch.get_num_threads()
    assert report["num_interop_threads"] == torch.get_num_interop_threads()
    assert isinstance(report["acl"], bool)


def test_build_settings_agree_with_runtime_flags() -> None:
    """What the build line says must agree with what torch reports at run time."""
    report = backend_report()
    build = report["build"]
    assert build["TORCH_VERSION"] == torch.__version__.split("+")[0]
    assert {"BLAS_INFO", "USE_MKLDNN", "USE_OPENMP"} <= set(build)
    assert (build["USE_MKLDNN"] == "ON") is torch.backends.mkldnn.is_available()
    assert (build["USE_OPENMP"] == "ON") is torch.backends.openmp.is_available()
    assert ("USE_CUDA" in build and build["USE_CUDA"] not in {"0", "OFF"}) is (torch.version.cuda is not None)
    assert not any(key.endswith("_FLAGS") for key in report["build_settings"])
    assert all(not value.endswith(",") for value in report["build_settings"].values())
    assert f"CPU capability usage: {torch.backends.cpu.get_cpu_capability()}" in report["libraries"]


def test_parallel_info_matches_torch() -> None:
    report = backend_report()
    parallel = report["parallel"]
    assert parallel["at::get_num_threads()"] == torch.get_num_threads()
    assert parallel["at::get_num_interop_threads()"] == torch.get_num_interop_threads()
    assert parallel["backend"] in torch.__config__.parallel_info()


def test_parsers_on_fixed_text() -> None:
    """Values with bare commas (CUDA_FLAGS) and spaces (CXX_FLAGS) must not split pairs."""
    config = (
        "PyTorch built with:\n  - GCC 13.3\n  - Build settings: BLAS_INFO=open, CUDA_FLAGS=-a,-b, "
        "CXX_FLAGS= -O2 -fPIC, USE_MKLDNN=ON, USE_MKLDNN_ACL=ON, USE_XPU=OFF, \n"
    )
    settings = parse_build_settings(config)
    assert settings == {
        "BLAS_INFO": "open",
        "CUDA_FLAGS": "-a,-b",
        "CXX_FLAGS": "-O2 -fPIC",
        "USE_MKLDNN": "ON",
        "USE_MKLDNN_ACL": "ON",
        "USE_XPU": "OFF",
    }
    info = "ATen/Parallel:\n\tat::get_num_threads() : 4\nATen parallel backend: OpenMP\n"
    assert parse_parallel_info(info) == {"at::get_num_threads()": 4, "backend": "OpenMP"}


def test_module_prints_json_and_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tsr.core.backend"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert report["torch"] == torch.__version__
    assert report["machine"] == platform.machine()
    assert result.stderr.strip().splitlines()[-1] == summary(report)


def test_native_bf16_reads_the_cpu_flags() -> None:
    """x86 names bf16 in "flags" (avx512_bf16, amx_bf16), arm64 in "Features" (bf16); without either, False."""
    xeon = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\nprocessor\t: 1\n"
    epyc_zen3 = "flags\t\t: fpu sse avx2 fma\n"
    graviton3 = "Features\t: fp asimd sve bf16 i8mm\n"
    assert cpu_flags(xeon) == {"fpu", "sse", "avx512f", "amx_bf16", "amx_tile"}
    assert native_bf16(xeon) and native_bf16(graviton3)
    assert not native_bf16(epyc_zen3) and not native_bf16("")
    assert backend_report()["native_bf16"] == native_bf16()
