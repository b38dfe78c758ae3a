"""Run records: what a run ran on, recorded beside its results (eval summary.json, reconstruct
--report), and the comparison of a stored run configuration with a new one (eval, tune).

Results repeat bit for bit on the same machine with the same torch version, device and torch
thread count; with another thread count floating-point reductions differ in the last bits and a
stochastic sampler turns that into different samples of the same quality (docs/design.md §7.5).
"""
from __future__ import annotations

from importlib import metadata

import torch


def scoreinv_version() -> str:
    """The installed package's version ('unknown' when run from a tree that is not installed)."""
    try:
        return metadata.version("scoreinv")
    except metadata.PackageNotFoundError:
        return "unknown"


def environment(device) -> dict:
    """{scoreinv, torch, threads, device[, gpu]}: what bit-for-bit reproducibility depends on."""
    dev = torch.device(device)
    env = {"scoreinv": scoreinv_version(), "torch": torch.__version__, "threads": int(torch.get_num_threads()),
           "device": str(dev)}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def config_diff(a: dict, b: dict, prefix: str = "", skip: str = "") -> list[str]:
    """Keys (dotted) whose values differ between two JSON-like dicts, with both values."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k == skip:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return out
