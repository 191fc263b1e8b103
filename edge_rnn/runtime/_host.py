"""What CPU this is, as far as int8 kernels care: its model and the instruction sets they choose between.

onnxruntime picks its int8 kernels from the CPU's own feature bits (``cpuid``
on x86-64, the kernel's hardware capabilities on ARM64), not from what
``/proc/cpuinfo`` prints. So the features are read the same way where that is
possible: ``cpuid`` through a few bytes of machine code on x86-64 Linux and
macOS, ``getauxval`` on ARM64 Linux, ``sysctl`` on ARM64 macOS; the text files
are the fallback. An emulator (qemu) shows the CPU it emulates, as onnxruntime
sees it. Nothing here needs more than the standard library.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from edge_rnn.runtime._bundle import printable

__all__ = ["host_record", "isa_features", "FEATURES", "describe_host", "parse_cpuinfo"]

# The features that decide which int8 kernel runs (docs/deployment.md).
FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "dotprod", "i8mm")

# cpuid(leaf, subleaf, out) for the System V x86-64 ABI: rdi=leaf, rsi=subleaf, rdx=out (four uint32).
_CPUID = bytes([
    0x53,                    # push rbx
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])
# xgetbv(0): which register states the OS saves (AVX needs bits 1-2, AVX-512 bits 5-7); returns edx:eax.
_XGETBV = bytes([0x31, 0xC9, 0x0F, 0x01, 0xD0, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3])


class _Code:
    """Machine code in an executable page; kept alive as long as its function is used."""

    def __init__(self, code: bytes, restype: Any, argtypes: list[Any]):
        self.page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self.page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.page))
        self.fn = ctypes.CFUNCTYPE(restype, *argtypes)(address)


def _x86_cpuid() -> dict[str, Any] | None:
    if os.name != "posix" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        cpuid = _Code(_CPUID, None, [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p])
        xgetbv = _Code(_XGETBV, ctypes.c_uint64, [])
    except (OSError, ValueError, AttributeError, TypeError):  # no executable pages here (a hardened kernel)
        return None

    def leaf(n: int, sub: int = 0) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint32 * 4)()
        cpuid.fn(n, sub, ctypes.addressof(out))
        return out[0], out[1], out[2], out[3]

    top = leaf(0)[0]
    _, _, ecx1, _ = leaf(1)
    osxsave = bool(ecx1 >> 27 & 1)
    xcr0 = xgetbv.fn() if osxsave else 0
    b7 = c7 = d7 = a71 = 0
    if top >= 7:
        _, b7, c7, d7 = leaf(7)
        a71 = leaf(7, 1)[0]
    return {"brand": _x86_brand(leaf), **_x86_features(xcr0, b7, c7, d7, a71)}


def _x86_features(xcr0: int, b7: int, c7: int, d7: int, a71: int) -> dict[str, bool]:
    """The int8-relevant features from cpuid leaf 7 (ebx, ecx, edx; subleaf 1's eax), each only where the OS saves
    the registers it needs (``xcr0``: AVX's ymm, AVX-512's zmm, AMX's tiles)."""
    ymm = xcr0 & 0b110 == 0b110
    zmm = ymm and xcr0 & 0b11100000 == 0b11100000
    amx = xcr0 & (0b11 << 17) == (0b11 << 17)
    return {
        "avx2": ymm and bool(b7 >> 5 & 1),
        "avx512f": zmm and bool(b7 >> 16 & 1),
        "avx512bw": zmm and bool(b7 >> 30 & 1),
        "avx512_vnni": zmm and bool(c7 >> 11 & 1),
        "avx_vnni": ymm and bool(a71 >> 4 & 1),
        "amx_int8": amx and bool(d7 >> 25 & 1),
    }


def _x86_brand(leaf: Any) -> str | None:
    """The CPU's name for itself (cpuid leaves 0x80000002-4), where it has one."""
    brand = b""
    if leaf(0x80000000)[0] >= 0x80000004:
        for n in (0x80000002, 0x80000003, 0x80000004):
            brand += b"".join(r.to_bytes(4, "little") for r in leaf(n))
    return brand.split(b"\0")[0].decode("ascii", "replace").strip() or None


def _linux_arm64_hwcaps() -> dict[str, bool] | None:
    if platform.system() != "Linux" or platform.machine().lower() not in ("aarch64", "arm64"):
        return None
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hwcap, hwcap2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
    return {"neon": bool(hwcap >> 1 & 1), "dotprod": bool(hwcap >> 20 & 1), "i8mm": bool(hwcap2 >> 13 & 1)}


def _sysctl(name: str) -> str | None:
    try:
        r = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _mac_arm64() -> dict[str, bool] | None:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return None
    return {"neon": True, "dotprod": _sysctl("hw.optional.arm.FEAT_DotProd") == "1",
            "i8mm": _sysctl("hw.optional.arm.FEAT_I8MM") == "1"}


CPUINFO = Path("/proc/cpuinfo")  # read through this name, so that a test can point it elsewhere


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """The model name and the feature words of a ``/proc/cpuinfo`` text: x86's ``model name`` and ``flags``,
    ARM's ``CPU model``/``Hardware`` and ``Features``; the first processor's. (None, set()) where it has neither."""
    name, words = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and name is None and value.strip():
            name = value.strip()
        elif key in ("flags", "features") and not words:
            words = set(value.split())
    return name, words


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The model name and the feature words of /proc/cpuinfo (the host's, under a user-mode emulator); (None,
    set()) where there is no such file."""
    try:
        return parse_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None, set()


def _from_words(words: set[str]) -> dict[str, bool]:
    return {"avx2": "avx2" in words, "avx512f": "avx512f" in words, "avx512bw": "avx512bw" in words,
            "avx512_vnni": "avx512_vnni" in words, "avx_vnni": "avx_vnni" in words,
            "amx_int8": "amx_int8" in words, "neon": bool({"asimd", "neon"} & words),
            "dotprod": "asimddp" in words, "i8mm": "i8mm" in words}


@functools.lru_cache(maxsize=1)
def isa_features() -> dict[str, Any]:
    """{feature: bool} for :data:`FEATURES`, ``"read_from"``: how they were read, and on x86-64 ``"brand"``: the
    CPU's own name for itself."""
    for how, read in (("cpuid", _x86_cpuid), ("getauxval", _linux_arm64_hwcaps), ("sysctl", _mac_arm64)):
        found = read()
        if found is not None:
            return {**dict.fromkeys(FEATURES, False), **found, "read_from": how}
    _, words = _cpuinfo()
    return {**_from_words(words), "read_from": "/proc/cpuinfo" if words else "nothing (features unknown)"}


def _cpu_model() -> str:
    brand = isa_features().get("brand")  # on x86-64, what the CPU itself reports (an emulator's, under qemu)
    if brand:
        return brand
    name, _ = _cpuinfo()
    if name is None and platform.system() == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
    processor = platform.processor()  # Windows' description; elsewhere often the architecture again, or nothing
    return name or (processor if processor and processor != platform.machine() else "unknown")


def int8_kernel(features: dict[str, Any]) -> str:
    """The kind of u8 x s8 product onnxruntime's int8 kernels use on a CPU with ``features`` (module docstring of
    :mod:`edge_rnn.deploy._int8`): whether full-range int8 weights saturate there."""
    if features.get("amx_int8") or features.get("avx512_vnni") or features.get("avx_vnni"):
        return "vnni (int32 accumulation: exact)"
    if features.get("dotprod") or features.get("neon"):
        return "arm64 (int32 accumulation: exact)"
    if features.get("avx2") or features.get("avx512bw"):
        return "avx2 (vpmaddubsw, int16 pairs: saturates unless reduce_range)"
    return "unknown"


@functools.lru_cache(maxsize=1)
def host_record() -> dict[str, Any]:
    """The machine a figure was measured on: CPU model, int8-relevant features, onnxruntime, OS, Python."""
    import onnxruntime as ort

    features = isa_features()
    return {"cpu": _cpu_model(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "features": {k: features[k] for k in FEATURES}, "features_read_from": features["read_from"],
            "int8_kernel": int8_kernel(features), "onnxruntime": ort.__version__,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


# The features a benchmark's reader needs to see either way, on or off: they decide the fp32 and int8 kernels.
_KEY_FEATURES = {"x86": ("avx2", "avx512f", "avx512_vnni"), "arm": ("dotprod",)}


def _isa(record: dict) -> str:
    """The features that are on, then the key features of the record's architecture that are off; "ISA features
    unknown" where they could not be read."""
    feats = record.get("features")
    if not isinstance(feats, dict) or str(record.get("features_read_from", "")).startswith("nothing"):
        return "ISA features unknown"
    on = [printable(k, 20) for k, v in feats.items() if v is True][:len(FEATURES)]
    arch = str(record.get("machine", "")).lower()
    family = "arm" if arch in ("aarch64", "arm64") else "x86" if arch in ("x86_64", "amd64") else ""
    off = [f"no {k}" for k in _KEY_FEATURES.get(family, ()) if feats.get(k) is not True]
    return ", ".join(on + off) or "no int8-relevant features"


def describe_host(record: Any) -> str:
    """One line for a host record (ours or a manifest's; a manifest is not trusted, so any shape is taken): the
    line every benchmark prints beside its numbers and every table of figures in the docs carries, e.g.
    ``AMD EPYC 7B13 (x86_64, 2 cores; avx2, no avx512f, no avx512_vnni; onnxruntime 1.20.1; Linux 6.1.0)``."""
    if not isinstance(record, dict):
        return "an unrecorded machine"

    def field(key: str) -> str:
        return printable(record.get(key, "?"), 80)

    cpus = record.get("cpus")
    cores = f"{cpus} cores" if isinstance(cpus, int) and not isinstance(cpus, bool) else "cores unknown"
    return (f"{field('cpu')} ({field('machine')}, {cores}; {_isa(record)}; onnxruntime {field('onnxruntime')}; "
            f"{field('os')})")
