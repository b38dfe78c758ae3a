"""Many inputs: sharding across torchrun processes, and the resumable manifest of a batch run.

Sharding (`sharded`, `Shard`): under torchrun (WORLD_SIZE, RANK and LOCAL_RANK set, read by
`train.dist_info`, the one place that reads them) rank r of a world of N takes the items i with
i mod N = r: the inputs of `reconstruct`, the image batches of `eval`. Nothing is communicated;
a process group (gloo, also on GPUs: a barrier is all it carries) exists only so that rank 0 can
wait for the others before it merges their records. A rank on a GPU uses cuda:LOCAL_RANK.

Batch reconstruction (`reconstruct_many`, `scoreinv reconstruct --measurements FOLDER|LIST|FILES`):
one output per input in the --out folder, named after the input (case01.npz -> case01.nii.gz),
and a manifest (JSON): for every input its absolute path, sha256, output files (relative to the
folder), the settings hash, status (done | failed, with the error), seconds, rank and when it
finished. The settings (checkpoint file's sha256, solver options, output format, device type;
`settings_record`) are stored in the manifest with their hash; a folder whose manifest holds
other settings is refused unless `overwrite` (which starts over). An output is written
atomically (`scoreinv.writers`: a DICOM series is built in a temporary folder and renamed) and
only then is its input recorded as done, so a kill leaves either a finished, recorded output or
an unrecorded one that the next run redoes. A rerun skips the inputs done with the same settings
whose sha256 is unchanged and whose outputs exist, and redoes the rest. An input that fails with a
ScoreinvError is recorded as failed and the others go on.

Manifest files: one process writes manifest.json after every input; rank r of a sharded run
writes only manifest.rank{r}.json (no two ranks write one file) and rank 0, after a final barrier,
merges every part with manifest.json (per input the latest record wins) and removes the parts.
A killed sharded run leaves its parts; the next run (any world size) reads them all.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from . import atomic, ood, writers
from .data.fetch import sha256
from .errors import ScoreinvError, check_choice
from .reconstruct import plan, run as run_plan
from .runinfo import config_diff
from .sampling.settings import REFERENCE_KEYWORD
from .score import load_score_model, resolve_checkpoint
from .train import dist_info, resolve_device

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
PART = re.compile(r"^manifest\.rank(\d+)\.json$")
FORMATS = {"npy": ".npy", "nii.gz": ".nii.gz", "nii": ".nii", "dcm": ".dcm", "png": ".png"}
# A barrier waits for the slowest rank: on a resumed run one rank may have all the work left, so
# the process group's timeout must cover a whole run, not torch's default of 30 minutes.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


# --- sharding -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world` processes; `group`: a process group exists (barriers wait)."""
    rank: int = 0
    world: int = 1
    group: bool = False

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def mine(self, n: int) -> list[int]:
        """The items i of range(n) this rank takes: i mod world = rank."""
        return list(range(self.rank, n, self.world))

    def barrier(self) -> None:
        if self.group:
            dist.barrier()

    @staticmethod
    def say(msg: str) -> None:
        """Print a line in one write, so that the lines of ranks sharing a terminal do not interleave."""
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()

    @property
    def tag(self) -> str:
        """'[rank r/N] ' under a sharded run, '' otherwise (a prefix for printed lines)."""
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""


@contextmanager
def sharded(device: str = "auto"):
    """The Shard of this process (module docstring); a process group for the barriers is created for
    a sharded run and destroyed on leaving. `device`: --device; a CUDA rank uses cuda:LOCAL_RANK."""
    rank, world, local, _ = dist_info()
    if world < 1 or not 0 <= rank < world:
        raise ScoreinvError(f"WORLD_SIZE={world}, RANK={rank}: expected 0 <= RANK < WORLD_SIZE (set by torchrun)")
    if world == 1:
        yield Shard()
        return
    if resolve_device(device).type == "cuda":
        if local >= torch.cuda.device_count():
            raise ScoreinvError(f"LOCAL_RANK={local}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                "start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(local)
    created = False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ScoreinvError(f"WORLD_SIZE={world} and RANK={rank} are set without torchrun's rendezvous "
                                "(MASTER_ADDR); start a sharded run with torchrun --nproc-per-node N -m scoreinv.cli")
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        created = True
    try:
        yield Shard(rank, world, True)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


# --- inputs and outputs -------------------------------------------------------------------------
def is_batch(specs) -> bool:
    """Several --measurements, or one that is a folder or a .txt list: a batch run."""
    specs = list(specs)
    return len(specs) > 1 or any(Path(s).is_dir() or str(s).lower().endswith(".txt") for s in specs)


def expand_inputs(specs, flag: str = "--measurements") -> list[Path]:
    """The measurement files named by `specs`, in order: a .npz file; a folder (its *.npz files, sorted
    by name); a .txt list (one path per line, relative to the list's folder; blank lines and lines
    starting with # skipped). Every file must exist and end in .npz, none may be named twice."""
    files: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found = sorted((q for q in p.iterdir() if q.suffix == ".npz" and q.is_file()
                            and not q.name.startswith(".")), key=lambda q: q.name)
            if not found:
                raise ScoreinvError(f"{flag} {s}: the folder holds no .npz measurement file (written by "
                                    "`scoreinv simulate`)")
            files += found
        elif p.suffix.lower() == ".txt":
            if not p.is_file():
                raise ScoreinvError(f"{flag} {s}: no such list file")
            listed = []
            for k, line in enumerate(p.read_text().splitlines(), 1):
                t = line.strip()
                if not t or t.startswith("#"):
                    continue
                q = Path(t).expanduser()
                q = q if q.is_absolute() else p.parent / q
                if q.is_dir():
                    raise ScoreinvError(f"{flag} {s}, line {k}: {t} is a folder; the list names measurement files")
                listed.append(q)
            if not listed:
                raise ScoreinvError(f"{flag} {s}: the list names no file (one path per line)")
            files += listed
        else:
            files.append(p)
    seen: dict[Path, Path] = {}
    for q in files:
        if not q.is_file():
            raise ScoreinvError(f"{flag}: {q}: no such measurement file")
        if q.suffix.lower() != ".npz":
            raise ScoreinvError(f"{flag}: {q}: expected a .npz measurement file (from `scoreinv simulate`), a "
                                "folder of them or a .txt list")
        r = q.resolve()
        if r in seen:
            raise ScoreinvError(f"{flag}: {q} is named twice (also as {seen[r]})")
        seen[r] = q
    return files


def output_names(inputs, fmt: str, samples: int = 1) -> list[str]:
    """The output name of every input in the --out folder: its stem + the format's suffix
    (case01.npz -> case01.nii.gz). Raises when two inputs would share an output (or a _std map)."""
    ext = FORMATS[check_choice("--format", fmt, FORMATS)]
    names, owner = [], {}
    for q in inputs:
        name = q.name[: -len(q.suffix)] + ext
        for n in [name] + ([writers.std_path(name)] if samples > 1 else []):
            key = n.lower()
            if key in owner:
                raise ScoreinvError(f"--measurements: {owner[key]} and {q} would both write {n} in --out; rename "
                                    "one of them (outputs are named after the input file)")
            owner[key] = q
        names.append(name)
    return names


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """A batch --out: a new or empty folder, or one holding a batch run's manifest (to resume it)."""
    if str(out).lower().endswith(writers.SUPPORTED):
        raise ScoreinvError(f"{flag} {out}: with several inputs --out is a folder (one output per input, its "
                            "format from --format); got a file name")
    if out.exists() and not out.is_dir():
        raise ScoreinvError(f"{flag} {out}: exists and is not a folder")
    atomic.check_new_output(out / MANIFEST, overwrite=True, flag=flag)        # writable, not a folder
    if out.is_dir():
        names = [p.name for p in out.iterdir() if not _stale(p.name)]
        if names and not any(n == MANIFEST or PART.match(n) for n in names):
            raise ScoreinvError(f"{flag} {out}: the folder is not empty and holds no batch manifest ({MANIFEST}); "
                                "give a new or empty folder, or the folder of an earlier batch run to resume it")


def _stale(name: str) -> bool:
    """A temporary file or folder left by an atomic write cut short (`scoreinv.atomic`)."""
    return name.startswith(".") and (".tmp" in name or name.endswith(".old"))


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the manifest -------------------------------------------------------------------------------
@dataclass
class Manifest:
    """The records of a batch folder (module docstring); `entries`: absolute input path -> record."""
    folder: Path
    settings: dict
    shard: Shard
    entries: dict = field(default_factory=dict)
    mine: dict = field(default_factory=dict)      # what this process writes (its part, or all)

    @property
    def hash(self) -> str:
        return settings_hash(self.settings)

    @property
    def path(self) -> Path:
        return self.folder / (MANIFEST if self.shard.world == 1 else f"manifest.rank{self.shard.rank}.json")

    def _doc(self, entries: dict, **extra) -> dict:
        return {"version": MANIFEST_VERSION, "command": "scoreinv reconstruct", "settings": self.settings,
                "settings_hash": self.hash, **extra, "inputs": dict(sorted(entries.items()))}

    def done(self, key: str, digest: str) -> dict | None:
        """The record of a finished input with this sha256 whose outputs all exist, else None."""
        e = self.entries.get(key)
        if e is None or e.get("status") != "done" or e.get("sha256") != digest or e.get("settings_hash") != self.hash:
            return None
        return e if all((self.folder / f).exists() for f in e.get("outputs", [])) else None

    def record(self, key: str, entry: dict) -> None:
        """Store a record and write this process's manifest file atomically."""
        entry = {"input": key, **entry, "settings_hash": self.hash, "rank": self.shard.rank,
                 "finished": time.time()}
        self.entries[key] = entry
        self.mine[key] = entry
        extra = {"rank": self.shard.rank, "world": self.shard.world} if self.shard.world > 1 else {}
        atomic.write_text(self.path, json.dumps(self._doc(self.mine, **extra), indent=1, default=str))

    def merge(self) -> Path:
        """Rank 0 (or the one process) after all ranks finished: manifest.json = every record of the
        folder (the latest per input); the parts are removed. Returns the manifest's path."""
        docs = _read_all(self.folder)
        merged = _latest(d["inputs"] for _, d in docs)
        atomic.write_text(self.folder / MANIFEST, json.dumps(self._doc(merged), indent=1, default=str))
        for p, _ in docs:
            if p.name != MANIFEST:
                p.unlink()
        self.entries = merged
        return self.folder / MANIFEST


def _read_all(folder: Path) -> list[tuple[Path, dict]]:
    """(path, document) of manifest.json and every manifest.rank*.json in `folder`."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if p.name == MANIFEST or PART.match(p.name):
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise ScoreinvError(f"{p}: unreadable batch manifest ({e}); remove it or pass --overwrite") from None
            if not isinstance(d, dict) or d.get("version") != MANIFEST_VERSION or not isinstance(d.get("inputs"), dict):
                raise ScoreinvError(f"{p}: not a batch manifest of version {MANIFEST_VERSION}; remove it or pass "
                                    "--overwrite")
            out.append((p, d))
    return out


def _latest(many) -> dict:
    """Per input, the record that finished last."""
    out: dict = {}
    for entries in many:
        for k, e in entries.items():
            if k not in out or float(e.get("finished", 0)) >= float(out[k].get("finished", 0)):
                out[k] = e
    return out


def open_manifest(folder: Path, settings: dict, shard: Shard, overwrite: bool = False) -> Manifest:
    """Every rank checks the folder and reads its manifest files (refusing other settings unless
    `overwrite`); after a barrier rank 0 removes what a killed write left and, with `overwrite`,
    replaces the old records by an empty manifest of these settings (so that the folder is never
    without one); after a second barrier every rank has its Manifest."""
    check_out_folder(folder)
    docs = [] if overwrite else _read_all(folder)
    for p, d in docs:
        if d.get("settings_hash") != settings_hash(settings):
            diff = config_diff(d.get("settings", {}), settings)
            raise ScoreinvError(f"--out {folder}: holds a batch run of other settings ({p.name}; differs in: "
                                f"{', '.join(diff) or 'the settings hash'}); give the same settings to resume it, "
                                "another --out, or --overwrite to redo every input")
    shard.barrier()              # every rank has read the folder before rank 0 changes it
    m = Manifest(folder, settings, shard, _latest(d["inputs"] for _, d in docs))
    if shard.lead:
        folder.mkdir(parents=True, exist_ok=True)
        for p in list(folder.iterdir()):
            if not _stale(p.name):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if overwrite:
            atomic.write_text(folder / MANIFEST, json.dumps(m._doc({}), indent=1, default=str))
            for p in folder.iterdir():
                if PART.match(p.name):
                    p.unlink()
    shard.barrier()
    if shard.world > 1:          # this rank's part keeps what it held (a killed run's records)
        m.mine = dict(next((d["inputs"] for p, d in docs if p.name == m.path.name), {}))
    else:
        m.mine = dict(m.entries)
    return m


# --- batch reconstruction -----------------------------------------------------------------------
def settings_record(checkpoint: str, fmt: str, device: torch.device, preset=None, **options) -> dict:
    """What a batch folder's outputs depend on: the checkpoint file's sha256, the preset file's sha256
    (or 'reference' / None), the output format, the device type and the solver options."""
    if isinstance(preset, (str, os.PathLike)) and preset != REFERENCE_KEYWORD:
        preset = {"sha256": sha256(preset)} if Path(preset).is_file() else str(preset)
    return {"checkpoint_sha256": sha256(resolve_checkpoint(checkpoint)), "preset": preset, "format": fmt,
            "device": device.type, **{k: options[k] for k in sorted(options)}}


@dataclass
class BatchResult:
    done: list = field(default_factory=list)        # inputs reconstructed now
    skipped: list = field(default_factory=list)     # finished before, unchanged
    failed: list = field(default_factory=list)      # (input, error)
    manifest: Path | None = None                    # the merged manifest (rank 0 / one process)


def reconstruct_many(checkpoint: str, specs, out_dir, fmt: str = "nii.gz", *, shard: Shard | None = None,
                     overwrite: bool = False, progress: bool = False, log=Shard.say, solver: str | None = None,
                     steps: int | None = None, samples: int = 1, sets: dict | None = None, preset=None,
                     batch_size: int = 8, seed: int = 0, device: str = "auto", ct_operator: str | None = None,
                     slices: str | None = None, coupling: str | None = None) -> BatchResult:
    """Reconstruct every input of `specs` (expand_inputs) into the folder `out_dir`, this rank's share
    (module docstring). Every input is solved as `reconstruct.plan/run` solves one file, with the same
    seed: its output equals a single `scoreinv reconstruct` of that file."""
    shard = shard or Shard()
    out = Path(out_dir)
    check_choice("--format", fmt, FORMATS)
    inputs = expand_inputs(specs)
    names = output_names(inputs, fmt, samples)
    dev = resolve_device(device)
    options = {"solver": solver, "steps": steps, "samples": samples, "sets": sets or {}, "batch_size": batch_size,
               "seed": seed, "ct_operator": ct_operator, "slices": slices, "coupling": coupling}
    settings = settings_record(checkpoint, fmt, dev, preset, **options)
    manifest = open_manifest(out, settings, shard, overwrite)
    model = load_score_model(checkpoint, device=dev)
    result, described = BatchResult(), set()
    mine = shard.mine(len(inputs))
    for n, i in enumerate(mine, 1):
        src, key = inputs[i], str(inputs[i].resolve())
        where = f"{shard.tag}[{n}/{len(mine)}] {src.name}"
        digest = sha256(src)
        if manifest.done(key, digest):
            log(f"{where}: skipped (done before with these settings, input unchanged)")
            result.skipped.append(str(src))
            continue
        if key in manifest.entries and manifest.entries[key].get("status") == "done":
            log(f"{where}: redoing (the input changed or an output is missing)")
        t0 = time.perf_counter()
        try:
            p = plan(checkpoint, str(src), str(out / names[i]), device=device, overwrite=True, loaded=model,
                     preset=preset, log=log, **options)
            if p.settings.describe() not in described:
                described.add(p.settings.describe())
                log(f"{shard.tag}solver {p.settings.describe()}")
            r = run_plan(p, progress=progress)
        except ScoreinvError as e:
            manifest.record(key, {"sha256": digest, "outputs": [], "status": "failed", "error": str(e),
                                  "seconds": time.perf_counter() - t0})
            log(f"{where}: failed: {e}")
            result.failed.append((str(src), str(e)))
            continue
        sec = time.perf_counter() - t0
        files = [os.path.relpath(f, out) + (os.sep if f.endswith(os.sep) else "") for f in r.files]
        scores = {k: float(v.mean()) for k, v in r.metrics.items()}
        manifest.record(key, {"sha256": digest, "outputs": files, "status": "done", "seconds": sec,
                              "slices": len(p.meas), "nfe_per_slice": r.nfe, "estimate": r.estimate,
                              "metrics": scores, "ood_check": ood.summary_line(r.ood),
                              "ood_verdicts": [c.verdict for c in r.ood]})
        if any(c.warning for c in r.ood):
            log(f"{where}: {ood.summary_line(r.ood)}")
        fig = ", ".join(f"{k.upper()} {v:.2f}" if k.startswith("psnr") else f"{k.upper()} {v:.4f}"
                        for k, v in scores.items())
        log(f"{where} -> {', '.join(files)}: {len(p.meas)} slice(s), {sec:.1f} s" + (f", {fig}" if fig else ""))
        result.done.append(str(src))
    shard.barrier()
    if shard.lead:
        result.manifest = manifest.merge()
    return result
