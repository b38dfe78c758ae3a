"""Validation helpers shared by every public entry point.

All user-facing errors are `ScoreinvError` (a `ValueError`), whose message says what was
wrong and what was expected. Nothing here turns NaN into a number.
"""
from __future__ import annotations

import math

import torch


class ScoreinvError(ValueError):
    """A user-facing error: bad input, bad file, bad configuration."""


class Diverged(ScoreinvError):
    """A computation whose result is not finite or not defined (e.g. a sampler whose step sizes
    are too large for its noise schedule); a tuning trial that raises it is scored the metric's
    worst value, and the study goes on."""


def run_reporting(fn, name: str) -> int:
    """`fn()`'s status, with the user-facing failures as one line on stderr: a ScoreinvError or a file
    system refusal (OSError, naming the path) `NAME: error: ...` and status 2, Ctrl-C status 130.
    The one home of this rule: `scoreinv` (cli.main) and the benchmark scripts (run_script)."""
    import sys
    try:
        return int(fn() or 0)
    except ScoreinvError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = e.filename if e.filename is not None else ""
        print(f"{name}: error: {where}{': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def run_script(main, name: str) -> None:
    """Exit with `main()`'s status by the command line's rule (run_reporting): a script's `__main__`."""
    import sys
    sys.exit(run_reporting(main, name))


def check_finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """Raise if `t` holds NaN or Inf; return `t` unchanged."""
    if not torch.is_tensor(t):
        raise ScoreinvError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        ok = torch.isfinite(t.real).all() and torch.isfinite(t.imag).all()
    else:
        ok = torch.isfinite(t).all() if t.is_floating_point() else True
    if not bool(ok):
        raise ScoreinvError(f"{name}: contains NaN or Inf; expected finite values")
    return t


def check_images(name: str, x: torch.Tensor, size: tuple[int, int] | None = None,
                 channels: int | None = 1) -> torch.Tensor:
    """Check a batch of 2-D slices of shape (B, C, H, W); return it.

    `size` (H, W) and `channels` are checked when given.
    """
    if not torch.is_tensor(x):
        raise ScoreinvError(f"{name}: expected a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ScoreinvError(f"{name}: expected a batch of 2-D slices of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ScoreinvError(f"{name}: expected {channels} channel(s), got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ScoreinvError(f"{name}: expected slices of size {tuple(size)}, got {tuple(x.shape[-2:])}")
    return check_finite(name, x)


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None) -> float:
    """Raise unless lo <= value <= hi (either bound may be None); return value as float."""
    v = float(value)
    if math.isnan(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ScoreinvError(f"{name} = {value!r} is outside its valid range [{lo_s}, {hi_s}]")
    return v


def check_int(name: str, value, lo: int | None = 1, hi: int | None = None) -> int:
    """The one integer check: raise unless `value` is an integer (bool refused; a float with an
    integer value accepted) with lo <= value <= hi (either bound may be None); return it as int.

    `name` is what the user typed: the command-line flag (`--steps`) or the config key
    (`model.nf`), so that the message names what to change. The default lo = 1 is "positive".
    """
    import numbers

    ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if not ok or (lo is not None and int(value) < lo) or (hi is not None and int(value) > hi):
        if lo == 1 and hi is None:
            want = "a positive integer"
        elif hi is None:
            want = f"an integer >= {lo}"
        elif lo is None:
            want = f"an integer <= {hi}"
        else:
            want = f"an integer in [{lo}, {hi}]"
        raise ScoreinvError(f"{name} = {value!r}: expected {want}")
    return int(value)


def check_choice(name: str, value: str, choices) -> str:
    """Raise unless value is one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ScoreinvError(f"unknown {name} {value!r}; expected one of: {', '.join(map(str, choices))}")
    return value


def per_sample(v, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a (B,) tensor against a batch `x` of shape (B, ...)."""
    v = torch.as_tensor(v, dtype=x.real.dtype if x.is_complex() else x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    return v.reshape(-1, *([1] * (x.ndim - 1)))
