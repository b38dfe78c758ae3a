"""Benchmarks: each module's `run()` returns a dict measured in one run; `emit` prints it."""


def emit(res: dict, section: str | None = None) -> None:
    """Print `key: value` lines (floats to 6 significant digits)."""
    if section:
        print(f"# bench {section}")
    for k, v in res.items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
