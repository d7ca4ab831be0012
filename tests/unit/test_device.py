"""The device record: CPU model and the ISA features that decide int8 speed, on x86 and on a Pi."""

from __future__ import annotations

from edgekit.device import device_record, parse_cpuinfo

PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma\n"


def test_arm_cpu_is_named_from_its_part_code():
    model, flags = parse_cpuinfo(PI4)
    assert model == "Arm Cortex-A72 (Raspberry Pi 4)"
    assert {"asimd"} <= flags and "asimddp" not in flags


def test_x86_model_name_and_flags():
    model, flags = parse_cpuinfo(EPYC)
    assert model == "AMD EPYC 7B13" and "avx2" in flags


def test_record_marks_emulation(monkeypatch):
    monkeypatch.delenv("QEMU_CPU", raising=False)
    assert "emulated" not in device_record()
    monkeypatch.setenv("QEMU_CPU", "cortex-a72")
    record = device_record()
    assert record["emulated"] == "qemu-user, QEMU_CPU=cortex-a72"
    assert {"cpu", "arch", "features", "cores", "os", "memory_gib", "fast_int8"} <= set(record)
