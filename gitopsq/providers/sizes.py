"""Which node size runs a run: what a Libcloud NodeSize offers, in a run file's units, and the
cheapest one that satisfies `resources` (`choose_size`, a pure function)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from libcloud.compute.base import NodeSize

from gitopsq.spec import Gpu, Range, Resources

# dstack's defaults for what a run file leaves unset (a GPU nobody asked for is not paid for).
DEFAULT_CPU = Range(2, None)
DEFAULT_MEMORY = Range(8, None)  # GB
DEFAULT_DISK = Range(100, None)  # GB

# The GPU of each EC2 GPU family: vendor, model name as dstack writes it, memory per GPU in GB.
# Libcloud's size data gives only the count ("gpu") and a total memory text ("gpuMemory").
EC2_GPUS = {
    "g2": ("nvidia", "K520", 4), "g3": ("nvidia", "M60", 8), "g3s": ("nvidia", "M60", 8),
    "g4ad": ("amd", "V520", 8), "g4dn": ("nvidia", "T4", 16), "g5": ("nvidia", "A10G", 24),
    "g5g": ("nvidia", "T4G", 16), "g6": ("nvidia", "L4", 24), "gr6": ("nvidia", "L4", 24),
    "g6e": ("nvidia", "L40S", 48), "p2": ("nvidia", "K80", 12), "p3": ("nvidia", "V100", 16),
    "p3dn": ("nvidia", "V100", 32), "p4d": ("nvidia", "A100", 40), "p4de": ("nvidia", "A100", 80),
    "p5": ("nvidia", "H100", 80), "p5e": ("nvidia", "H200", 141), "p5en": ("nvidia", "H200", 141),
}


@dataclass(frozen=True)
class SizeInfo:
    """What a Libcloud NodeSize offers, in the units of a run file."""

    id: str
    price: float | None  # per hour; None when unknown (libcloud's data has gaps and zeros)
    vcpus: float | None
    memory: float  # GB
    gpu_count: int = 0
    gpu_vendor: str | None = None
    gpu_name: str | None = None
    gpu_memory: float | None = None  # GB per GPU
    arch: str | None = None  # x86_64 / arm64; None when the driver does not say


def _number(value) -> float | None:
    match = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", str(value)) if value is not None else None
    return float(match.group(1)) if match else None


def size_info(size: NodeSize) -> SizeInfo:
    extra = size.extra or {}
    vcpus = next((_number(extra[k]) for k in ("vcpu", "vcpus", "cpu", "cpus", "guestCpus") if extra.get(k) is not None), None)
    price = size.price if isinstance(size.price, (int, float)) and size.price > 0 else None
    gpu_count = int(next((_number(extra[k]) for k in ("gpu", "gpus", "gpu_count") if extra.get(k) is not None), 0) or 0)
    vendor = name = memory = None
    arch = None
    if "physicalProcessor" in extra:  # EC2's data
        arch = "arm64" if "Graviton" in str(extra["physicalProcessor"]) else "x86_64"
        family = str(size.id).split(".")[0]
        if gpu_count and family in EC2_GPUS:
            vendor, name, memory = EC2_GPUS[family]
        elif gpu_count:
            total = _number(extra.get("gpuMemory"))
            memory = total / gpu_count if total else None
    else:
        name = extra.get("gpu_model") or extra.get("gpu_name")
    return SizeInfo(str(size.id), price, vcpus, (size.ram or 0) / 1024, gpu_count, vendor, name, memory, arch)


def _show(rng: Range, unit: str = "") -> str:
    low = "" if rng.min is None else f"{rng.min:g}{unit}"
    high = "" if rng.max is None else f"{rng.max:g}{unit}"
    return low if rng.min == rng.max else f"{low}..{high}"


def _gpu_text(gpu: Gpu) -> str:
    what = "/".join(gpu.names) or (f"{gpu.vendor} GPU" if gpu.vendor else "GPU")
    text = f"{_show(gpu.count)}x {what}"
    if gpu.memory:
        text += f" with {_show(gpu.memory, 'GB')} each"
    if gpu.total_memory:
        text += f" with {_show(gpu.total_memory, 'GB')} in total"
    return text


def _gpu_fits(info: SizeInfo, gpu: Gpu | None) -> bool:
    if gpu is None:
        return info.gpu_count == 0
    if not gpu.count.contains(info.gpu_count):
        return False
    if info.gpu_count == 0:
        return True  # a count range starting at 0 is met by no GPU
    if gpu.vendor and gpu.vendor != info.gpu_vendor:
        return False  # an unknown vendor does not satisfy a named one
    if gpu.names and (info.gpu_name or "").lower() not in {n.lower() for n in gpu.names}:
        return False
    if gpu.memory and (info.gpu_memory is None or not gpu.memory.contains(info.gpu_memory)):
        return False
    if gpu.total_memory and (info.gpu_memory is None or not gpu.total_memory.contains(info.gpu_memory * info.gpu_count)):
        return False
    return True


def _sort_key(info: SizeInfo):
    return (info.price is None, info.price or 0.0, info.vcpus or 0.0, info.memory, info.id)


def choose_size(sizes: list[NodeSize], resources: Resources, *, max_price: float | None = None,
                arch: str | None = "x86_64", provider: str = "cloud", region: str | None = None,
                ) -> tuple[NodeSize | None, str | None]:
    """The cheapest size satisfying `resources` (sizes without a price last), or why there is none.

    Unset cpu and memory take dstack's defaults (2.. vCPUs, 8GB..); no GPU asked for means a size
    without one; sizes of another CPU architecture than the image's (`arch`) are left out. The
    message names the resource no size has, or `max_price` when only the price rules sizes out.
    """
    where = f" in {region}" if region else ""
    cpu = resources.cpu or DEFAULT_CPU
    memory = resources.memory or DEFAULT_MEMORY
    infos = [(size, size_info(size)) for size in sizes]
    infos = [(s, i) for s, i in infos if arch is None or i.arch is None or i.arch == arch]
    tests = {
        "resources.cpu": (lambda i: i.vcpus is not None and cpu.contains(i.vcpus), f"{_show(cpu)} vCPUs"),
        "resources.memory": (lambda i: memory.contains(i.memory), f"{_show(memory, 'GB')} of memory"),
        "resources.gpu": (lambda i: _gpu_fits(i, resources.gpu),
                          _gpu_text(resources.gpu) if resources.gpu else "no GPU"),
    }
    fitting = [(s, i) for s, i in infos if all(test(i) for test, _ in tests.values())]
    if not fitting:
        for field, (test, want) in tests.items():
            if not any(test(i) for _, i in infos):
                return None, f"{field}: no {provider} size has {want}{where}"
        wants = ", ".join(want for _, want in tests.values())
        return None, f"resources: no {provider} size has all of {wants}{where}"
    fitting.sort(key=lambda si: _sort_key(si[1]))
    if max_price is not None:
        priced = [(s, i) for s, i in fitting if i.price is not None and i.price <= max_price]
        if not priced:
            cheapest = fitting[0][1]
            cost = f"costs {cheapest.price:g}/h" if cheapest.price is not None else "has no known price"
            return None, f"max_price: the cheapest {provider} size that fits{where} ({cheapest.id}) {cost}, above {max_price:g}"
        fitting = priced
    return fitting[0][0], None
