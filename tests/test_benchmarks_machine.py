"""The machine line every benchmark prints beside its numbers, and the docs' tables carry: one function,
edge_rnn.runtime._host.describe_host(host_record()), the same line a bundle's manifest records. Here with the CPU's
own feature bits out of the way, so that what is read is a /proc/cpuinfo text of our choosing, or none."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("onnxruntime")

from edge_rnn.runtime import _host
from tests.conftest import REPO

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2 avx512_vnni
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: avx avx2 avx512f avx512bw avx512_vnni amx_int8
"""
GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""
CORTEX_A53 = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
Hardware\t: BCM2835
"""


@pytest.fixture
def read_only_cpuinfo(monkeypatch, tmp_path):
    """host_record() as it is where neither cpuid, getauxval nor sysctl answer: from CPUINFO only."""
    for probe in ("_x86_cpuid", "_linux_arm64_hwcaps", "_mac_arm64"):
        monkeypatch.setattr(_host, probe, lambda: None)
    monkeypatch.setattr(_host.platform, "processor", lambda: "")

    def use(text: str | None, machine: str = "x86_64") -> str:
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(_host, "CPUINFO", path)
        monkeypatch.setattr(_host.platform, "machine", lambda: machine)
        _host.isa_features.cache_clear()
        _host.host_record.cache_clear()
        return _host.describe_host(_host.host_record())

    yield use
    _host.isa_features.cache_clear()  # the next caller reads this machine again
    _host.host_record.cache_clear()


@pytest.mark.parametrize("text, machine, cpu, isa", [
    (EPYC, "x86_64", "AMD EPYC 7B13", "avx2, no avx512f, no avx512_vnni"),  # the first processor's flags
    (XEON, "x86_64", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "avx2, avx512f, avx512bw, avx512_vnni, amx_int8"),
    (GRAVITON, "aarch64", "unknown", "neon, dotprod"),  # no model name in an ARM server's cpuinfo: said so
    (CORTEX_A53, "aarch64", "BCM2835", "neon, no dotprod"),
])
def test_the_machine_line_names_cpu_isa_features_onnxruntime_and_cores(read_only_cpuinfo, text, machine, cpu, isa):
    import onnxruntime

    line = read_only_cpuinfo(text, machine)
    assert line.startswith(f"{cpu} ({machine}, {os.cpu_count()} cores; {isa}; onnxruntime {onnxruntime.__version__};")


def test_no_cpuinfo_gives_an_honest_unknown(read_only_cpuinfo):
    line = read_only_cpuinfo(None)
    assert line.startswith(f"unknown (x86_64, {os.cpu_count()} cores; ISA features unknown; onnxruntime ")
    assert _host.host_record()["features_read_from"] == "nothing (features unknown)"
    assert not any(_host.host_record()["features"].values())


@pytest.mark.parametrize("text, name, words", [
    (EPYC, "AMD EPYC 7B13", {"fpu", "sse", "sse2", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "bmi2"}),
    (CORTEX_A53, "BCM2835", {"fp", "asimd", "evtstrm", "crc32", "cpuid"}),
    ("", None, set()), ("garbage without colons\n:\n", None, set()),
])
def test_parse_cpuinfo_reads_the_first_processor(text, name, words):
    assert _host.parse_cpuinfo(text) == (name, words)


@pytest.mark.parametrize("record, line", [
    ("not a record", "an unrecorded machine"),
    ({"cpu": "AMD EPYC 7B13", "machine": "x86_64", "features": {"avx2": True}, "onnxruntime": "1.17.0",
      "os": "Linux 6.1"}, "AMD EPYC 7B13 (x86_64, cores unknown; avx2, no avx512f, no avx512_vnni; onnxruntime 1.17.0; "
                          "Linux 6.1)"),  # an older manifest, without the core count
    ({"cpu": "x", "machine": "x86_64", "cpus": True, "features": "all"}, "x (x86_64, cores unknown; ISA features "
                                                                         "unknown; onnxruntime ?; ?)"),
])
def test_a_manifests_record_of_any_shape_gives_one_line(record, line):
    assert _host.describe_host(record) == line


MEASURING = sorted(p for p in (REPO / "benchmarks").glob("*.py")
                   if not p.name.startswith("_") and p.name != "routing_remap.py")  # counts ring moves: no machine


@pytest.mark.parametrize("script", MEASURING, ids=lambda p: p.name)
def test_every_benchmark_prints_the_machine_line_and_has_no_copy_of_it(script):
    text = script.read_text()
    assert "describe_host(" in text and "host_record()" in text
    assert "lscpu" not in text and "/proc/cpuinfo" not in text and "platform.processor" not in text
