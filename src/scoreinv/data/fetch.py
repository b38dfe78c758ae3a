"""`scoreinv data fetch`: real CT and MRI scans from two package registries, into a local cache.

Sources (docs/data.md):
- PyPI: the source distribution of pyradiomics 3.0.1 (BSD-3-Clause; its wheels carry no data),
  fetched with `python -m pip download --no-deps --no-binary :all: --no-build-isolation
  pyradiomics==3.0.1` (pip prepares the sdist's metadata, which needs numpy and setuptools in this
  Python: `--no-build-isolation` uses them instead of an isolated build environment; should that
  fail, pip is run once more with setuptools, wheel and versioneer installed by pip into a
  private folder of the download's temporary folder, never into this Python's environment).
  Files: data/lung1_image.nrrd, data/lung2_image.nrrd (chest CT, HU), data/brain1_image.nrrd,
  data/brain2_image.nrrd (T1-weighted brain MRI after contrast).
- Debian: the package invesalius-examples (GPL-2), fetched with `apt-get download
  invesalius-examples`. File: usr/share/doc/invesalius-examples/examples/Cranium.inv3 (head CT).
  The member is read from the package's data archive with `dpkg-deb --fsys-tarfile` when
  dpkg-deb is installed; without it (e.g. on a machine where the .deb was copied for --from) a
  small reader of the .deb layout is used (`debfile.deb_member`).

Cache: `cache_dir()`, i.e. $SCOREINV_DATA if set, else ~/.cache/scoreinv/data, one folder per
package. Only the image files are kept. Every file is checked against the SHA-256 and size in
FILES (the released files' values), and written atomically: a fetch downloads and extracts into
a temporary folder inside the cache, verifies every file, and only then renames the files into
place, so a failure (network, missing tool, checksum) leaves the cache as it was. A fetch reuses
files already in the cache after verifying them, and refuses a cached file whose checksum fails
unless --overwrite. Loading a dataset checks that its files are present with their sizes, and
the SHA-256 of each file it reads (about 0.03 s per file).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScoreinvError
from .debfile import deb_member

ENV = "SCOREINV_DATA"


@dataclass(frozen=True)
class Package:
    key: str            # the name `fetch` reports
    folder: str         # folder in the cache
    licence: str
    origin: str         # where it comes from, in words


@dataclass(frozen=True)
class RealFile:
    name: str           # file name in the cache (and in a --from folder)
    package: str        # key of PACKAGES
    member: str         # path inside the package archive
    size: int           # bytes
    sha256: str


PIP_SPEC = "pyradiomics==3.0.1"
SDIST = "pyradiomics-3.0.1.tar.gz"
DEB = "invesalius-examples"
PACKAGES = {
    "pyradiomics": Package("pyradiomics 3.0.1", "pyradiomics-3.0.1", "BSD-3-Clause",
                           f"PyPI source distribution {SDIST} (pip download)"),
    "invesalius-examples": Package("invesalius-examples", "invesalius-examples", "GPL-2",
                                   "Debian package invesalius-examples (apt-get download)"),
}
FILES = {
    "lung1": RealFile("lung1_image.nrrd", "pyradiomics", "pyradiomics-3.0.1/data/lung1_image.nrrd", 12548518,
                      "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed"),
    "lung2": RealFile("lung2_image.nrrd", "pyradiomics", "pyradiomics-3.0.1/data/lung2_image.nrrd", 17817709,
                      "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651"),
    "brain1": RealFile("brain1_image.nrrd", "pyradiomics", "pyradiomics-3.0.1/data/brain1_image.nrrd", 2023786,
                       "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf"),
    "brain2": RealFile("brain2_image.nrrd", "pyradiomics", "pyradiomics-3.0.1/data/brain2_image.nrrd", 1737246,
                       "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e"),
    "Cranium": RealFile("Cranium.inv3", "invesalius-examples",
                        "usr/share/doc/invesalius-examples/examples/Cranium.inv3", 18719455,
                        "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a"),
}
DATASET_FILES = {"ct-real": ("Cranium", "lung1", "lung2"), "mri-real": ("brain1", "brain2")}
FETCH_NAMES = (*DATASET_FILES, "all")
STALE_S = 3600          # a temporary fetch folder older than this is a killed fetch's: removed
TIMEOUT_S = 1800


def cache_dir() -> Path:
    """The one location of fetched data: $SCOREINV_DATA if set, else ~/.cache/scoreinv/data."""
    env = os.environ.get(ENV, "").strip()
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "scoreinv" / "data"


def cached_path(key: str) -> Path:
    f = FILES[key]
    return cache_dir() / PACKAGES[f.package].folder / f.name


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _label(key: str) -> str:
    f = FILES[key]
    return f"{PACKAGES[f.package].key}: {f.name}"


def verify(path, key: str, what: str | None = None) -> None:
    """Raise ScoreinvError unless `path` has the size and SHA-256 of FILES[key]."""
    f, path = FILES[key], Path(path)
    size = path.stat().st_size
    if size != f.size:
        raise ScoreinvError(f"{_label(key)} ({what or path}) has {size} bytes, expected {f.size}: truncated, "
                            "damaged or another release; it fails its checksum")
    got = sha256(path)
    if got != f.sha256:
        raise ScoreinvError(f"{_label(key)} ({what or path}) fails its SHA-256 check (got {got[:16]}..., "
                            f"expected {f.sha256[:16]}...): damaged, modified or another release")


def check_dataset(name: str) -> dict[str, Path]:
    """{file key: cached path} of dataset `name` after a cheap check (present, right size); raises
    with what to run when the data are not fetched or a file was changed."""
    out = {}
    for key in DATASET_FILES[name]:
        p = cached_path(key)
        if not p.is_file():
            raise ScoreinvError(f"{name}: the data are not fetched yet ({p} is missing); run `scoreinv data fetch "
                                f"{name}` first (or set {ENV} to the folder that holds them)")
        if p.stat().st_size != FILES[key].size:
            raise ScoreinvError(f"{name}: {p} has {p.stat().st_size} bytes, expected {FILES[key].size} (damaged or "
                                f"truncated); run `scoreinv data fetch {name} --overwrite`")
        out[key] = p
    return out


def check_read(name: str, key: str, path: Path) -> None:
    """The SHA-256 check before a dataset reads a cached file (raises with the command to re-fetch)."""
    try:
        verify(path, key)
    except ScoreinvError as e:
        raise ScoreinvError(f"{name}: {e}; run `scoreinv data fetch {name} --overwrite`") from None


# --- the sdist layout -------------------------------------------------------------------------
def sdist_members(sdist: Path, keys: list[str], staging: Path) -> list[str]:
    """Extract the FILES[keys] members of a pyradiomics sdist to staging/NAME; the keys it lacks."""
    wanted = {FILES[k].member: k for k in keys}
    got = set()
    try:
        with tarfile.open(str(sdist), "r:*") as tf:
            for m in tf:
                k = wanted.get(m.name.lstrip("./"))
                if k is not None and m.isfile():
                    with tf.extractfile(m) as src, open(staging / FILES[k].name, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 22)
                    got.add(k)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ScoreinvError(f"pyradiomics: cannot read {sdist} ({e}); expected the source distribution "
                            f"{SDIST}") from e
    return [k for k in keys if k not in got]


# --- downloads ------------------------------------------------------------------------------
def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower() or "not found" in ln.lower() or ln.startswith("E:")]
    return (errs or lines or ["no output"])[-1][:300]


def _run(cmd: list[str], cwd: Path, env=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ScoreinvError(f"`{' '.join(cmd)}` did not finish in {TIMEOUT_S} s (network?)") from None


def pip_download(dest: Path) -> Path:
    """Download the pyradiomics 3.0.1 sdist into dest with this Python's pip (module docstring)."""
    dest.mkdir(parents=True, exist_ok=True)
    if _run([sys.executable, "-m", "pip", "--version"], dest).returncode != 0:
        raise ScoreinvError(f"pyradiomics: pip is not available in this Python ({sys.executable}); install pip, "
                            f"or download {SDIST} elsewhere and pass it with --from")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
           PIP_SPEC, "-d", str(dest / "dl")]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = _run(cmd, dest, env)
    if r.returncode != 0:
        tools = dest / "buildtools"      # setuptools/wheel/versioneer for the metadata build, private
        t = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(tools),
                  "setuptools>=70.1", "wheel", "versioneer"], dest, env)
        if t.returncode == 0:
            env["PYTHONPATH"] = os.pathsep.join([str(tools), *filter(None, [env.get("PYTHONPATH")])])
            r = _run(cmd, dest, env)
    if r.returncode != 0:
        raise ScoreinvError(f"pyradiomics: `pip download {PIP_SPEC}` failed ({_tail(r.stderr + r.stdout)}); check "
                            f"access to the package index, or install numpy, setuptools and wheel in this Python, "
                            f"or pass {SDIST} with --from")
    found = sorted((dest / "dl").glob("pyradiomics-3.0.1.tar.gz"))
    if not found:
        raise ScoreinvError(f"pyradiomics: pip reported success but wrote no {SDIST} in {dest / 'dl'}")
    return found[0]


def apt_download(dest: Path) -> Path:
    """Download the invesalius-examples .deb into dest with `apt-get download`."""
    dest.mkdir(parents=True, exist_ok=True)
    if not shutil.which("apt-get"):
        raise ScoreinvError(f"{DEB}: apt-get is not installed (it is a Debian/Ubuntu tool); on another system "
                            f"download the Debian package {DEB} (e.g. from packages.debian.org) and pass the .deb, "
                            "or its extracted Cranium.inv3, with --from")
    r = _run(["apt-get", "download", DEB], dest)
    debs = sorted(dest.glob(f"{DEB}_*.deb"))
    if r.returncode != 0 or not debs:
        raise ScoreinvError(f"{DEB}: `apt-get download {DEB}` failed ({_tail(r.stderr + r.stdout)}); run "
                            f"`apt-get update` (Debian/Ubuntu with the main archive), or pass the .deb or its "
                            "Cranium.inv3 with --from")
    return debs[-1]


# --- --from ---------------------------------------------------------------------------------
def _candidates(source: Path, key: str) -> list[tuple[str, Path]]:
    """What in `source` can give FILES[key]: ('file', p) the file itself, ('sdist', p), ('deb', p)."""
    f = FILES[key]
    kind_of = "sdist" if f.package == "pyradiomics" else "deb"

    def archive(p: Path) -> bool:
        n = p.name.lower()
        return n.endswith((".tar.gz", ".tgz", ".tar")) if kind_of == "sdist" else n.endswith(".deb")

    if source.is_file():
        if source.name == f.name:
            return [("file", source)]
        return [(kind_of, source)] if archive(source) else []
    direct = sorted(p for p in source.rglob(f.name) if p.is_file())
    if direct:
        return [("file", direct[0])]
    pattern = SDIST if kind_of == "sdist" else f"{DEB}_*.deb"
    return [(kind_of, p) for p in sorted(source.rglob(pattern)) if p.is_file()][:1]


def _stage_from(source: Path, keys: list[str], staging: Path, log) -> None:
    for key in keys:
        f = FILES[key]
        cands = _candidates(source, key)
        if not cands:
            what = SDIST if f.package == "pyradiomics" else f"{DEB}_*.deb"
            raise ScoreinvError(f"{PACKAGES[f.package].key}: --from {source} holds neither {f.name} nor {what}; "
                                "pass a folder (or file) with one of them")
        kind, p = cands[0]
        dest = staging / f.name
        if kind == "file":
            shutil.copyfile(p, dest)
        elif kind == "sdist":
            if sdist_members(p, [key], staging):
                raise ScoreinvError(f"pyradiomics: {p} has no member {f.member}; expected {SDIST}")
        elif not deb_member(p, f.member, dest):
            raise ScoreinvError(f"{DEB}: {p} has no member {f.member}; expected the {DEB} package")
        verify(dest, key, f"from {p}")
        log(f"  {f.name:<18} from {p}, verified (SHA-256)")


def _stage_download(keys: list[str], staging: Path, log) -> None:
    by_pkg: dict[str, list[str]] = {}
    for k in keys:
        by_pkg.setdefault(FILES[k].package, []).append(k)
    for pkg, ks in by_pkg.items():
        t0 = time.time()
        if pkg == "pyradiomics":
            sdist = pip_download(staging / "pip")
            missing = sdist_members(sdist, ks, staging)
            if missing:
                raise ScoreinvError(f"pyradiomics: the downloaded {sdist.name} lacks "
                                    f"{', '.join(FILES[k].member for k in missing)}")
            src = sdist.name
        else:
            deb = apt_download(staging / "apt")
            for k in ks:
                if not deb_member(deb, FILES[k].member, staging / FILES[k].name):
                    raise ScoreinvError(f"{DEB}: the downloaded {deb.name} has no member {FILES[k].member}")
            src = deb.name
        for k in ks:
            verify(staging / FILES[k].name, k, f"from {src}")
            log(f"  {FILES[k].name:<18} from {src}, verified (SHA-256)")
        shutil.rmtree(staging / ("pip" if pkg == "pyradiomics" else "apt"), ignore_errors=True)
        log(f"  {PACKAGES[pkg].key} fetched in {time.time() - t0:.1f} s")


def _remove_stale(root: Path) -> None:
    for p in root.glob(".fetch-*"):
        with contextlib.suppress(OSError):     # another fetch may remove it between the checks
            if p.is_dir() and time.time() - p.stat().st_mtime > STALE_S:
                shutil.rmtree(p, ignore_errors=True)


def fetch(name: str, source=None, overwrite: bool = False, log=print) -> dict[str, Path]:
    """Fetch dataset `name` ('ct-real', 'mri-real' or 'all') into the cache; {file key: path}.

    source: a local sdist, .deb, extracted file, or a folder holding them (no download). Files
    already cached are verified and reused unless `overwrite`. Atomic (module docstring).
    """
    if name not in FETCH_NAMES:
        raise ScoreinvError(f"unknown dataset {name!r} to fetch; expected one of: {', '.join(FETCH_NAMES)}")
    names = list(DATASET_FILES) if name == "all" else [name]
    keys = list(dict.fromkeys(k for n in names for k in DATASET_FILES[n]))
    src = None
    if source is not None:
        src = Path(source)
        if not src.exists():
            raise ScoreinvError(f"--from {src}: no such file or folder")
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScoreinvError(f"cannot create the data cache {root} ({e.strerror}); set {ENV} to a writable "
                            "folder") from e
    if not os.access(root, os.W_OK | os.X_OK):
        raise ScoreinvError(f"cannot write in the data cache {root} (permission denied); set {ENV} to a writable "
                            "folder")
    _remove_stale(root)
    todo, out = [], {}
    for k in keys:
        p = cached_path(k)
        out[k] = p
        if p.exists() and not overwrite:
            try:
                verify(p, k)
            except ScoreinvError as e:
                raise ScoreinvError(f"{e}; run `scoreinv data fetch {name} --overwrite` to fetch it again") from None
            log(f"  {FILES[k].name:<18} already in the cache, verified (SHA-256)")
        else:
            todo.append(k)
    if not todo:
        log(f"{name}: all {len(keys)} file(s) already in {root}, verified; nothing fetched")
        return out
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        if src is not None:
            _stage_from(src, todo, staging, log)
        else:
            _stage_download(todo, staging, log)
        for k in todo:
            with open(staging / FILES[k].name, "rb") as fh:
                os.fsync(fh.fileno())
        for k in todo:
            out[k].parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / FILES[k].name, out[k])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{name}: {len(todo)} file(s) written to {root}" +
        (f", {len(keys) - len(todo)} reused" if len(keys) > len(todo) else ""))
    return out
