"""Stand-ins of the real scans that `scoreinv data fetch` takes from package registries, in the
same formats and archive layouts: a pyradiomics-3.0.1.tar.gz sdist whose data/*_image.nrrd are
gzip NRRD files in LPS space (the lungs with positive directions, the brains with a negative
row direction, as the released files), and an invesalius-examples .deb whose Cranium.inv3 is a
gzipped tar of main.plist + matrix.dat (int16, rows stored upside down, as InVesalius does).

The volumes keep the real slice counts and spacings (so the real split slabs apply) but are
small in-plane: Cranium and the brains 16 x 16, the lungs 32 x 32 (2 x Cranium, as 512 vs 256).
`use_standins` points the package at them: the checksums and sizes of scoreinv.data.fetch.FILES
and the shapes of scoreinv.data.realdata.SCANS are set to the stand-ins' values.

Every slice carries its code in a block at the top-left corner (2 x 2 pixels of the 16-pixel
volumes, 4 x 4 of the 32-pixel ones, so it survives 2 x 2 area averaging):
CT: HU = CODE_HU[patient] + slice; MRI: value = 200 + 20 x slice (head 1000, so p99.5 = 1000).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import plistlib
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np

from scoreinv.data import fetch, realdata

SIZES = {"Cranium": 16, "lung1": 32, "lung2": 32, "brain1": 16, "brain2": 16}
CODE_HU = {"Cranium": 0, "lung1": 300, "lung2": 600}
MRI_HEAD = 1000.0


def _scan(key):
    return next(s for scans in realdata.SCANS.values() for s in scans if s.key == key)


def volume(key: str) -> np.ndarray:
    """The stand-in of scan `key` in the display layout (D, H, W), int16."""
    s = _scan(key)
    n, d = SIZES[key], s.shape[0]
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    head = (yy - n / 2 + 0.5) ** 2 + (xx - n / 2 + 0.5) ** 2 < (0.42 * n) ** 2
    b = n // 8                                       # code block side: 2 (n = 16) or 4 (n = 32)
    vol = np.empty((d, n, n), np.int16)
    for k in range(d):
        if s.hu:
            sl = np.where(head, 40 + (xx * 3) % 50, -1024).astype(np.int16)
            sl[n // 2 - 1:n // 2 + 1, n - 4:n - 2] = 3500          # metal-bright: clipped to 1
            sl[:b, :b] = CODE_HU[key] + k
        else:
            sl = np.where(head, MRI_HEAD, 0.0)
            sl[:b, :b] = 200 + 20 * k
        sl[-b:, :b] = 1500 if s.hu else 600                        # bottom-left marker: orientation
        vol[k] = sl
    return vol


def write_nrrd(path: Path, key: str) -> None:
    """The display volume of `key` as a gzip NRRD in LPS space, stored as the released file is."""
    import nrrd

    s, vol = _scan(key), volume(key)
    xyz = vol.transpose(2, 1, 0)                     # (column, row, slice): LPS x, y, z
    p = s.pixel_mm
    if key.startswith("brain"):                      # row axis stored anterior-first: negative y step
        xyz = xyz[:, ::-1, :]
        dirs = np.diag([p, -p, s.slice_mm])
        origin = [-10.0, 20.0 + p * (xyz.shape[1] - 1), -5.0]
    else:
        dirs, origin = np.diag([p, p, s.slice_mm]), [-10.0, -20.0, -300.0]
    header = {"space": "left-posterior-superior", "space directions": dirs, "space origin": np.array(origin),
              "kinds": ["domain"] * 3, "encoding": "gzip", "endian": "little"}
    nrrd.write(str(path), np.ascontiguousarray(xyz), header, index_order="F")


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tf.addfile(info, io.BytesIO(data))


def write_sdist(path: Path, tmp: Path, keys=("lung1", "lung2", "brain1", "brain2")) -> dict[str, bytes]:
    """A pyradiomics-3.0.1.tar.gz with the stand-in NRRD files (and files a fetch must leave out);
    returns {file key: the bytes of its member}."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = {}
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "pyradiomics-3.0.1/setup.py", b"# stand-in\n")
        _add(tf, "pyradiomics-3.0.1/data/lung1_label.nrrd", b"not needed")
        for k in keys:
            f = tmp / fetch.FILES[k].name
            write_nrrd(f, k)
            out[k] = f.read_bytes()
            _add(tf, fetch.FILES[k].member, out[k])
    return out


def inv3_bytes(vol: np.ndarray, spacing=(0.9570312, 0.9570312, 1.5), orientation: int = 1) -> bytes:
    """An InVesalius project: main.plist + matrix.dat (rows upside down) + a mask, gzipped tar."""
    plist = {"format_version": 1, "modality": "CT", "name": "stand-in", "orientation": orientation,
             "spacing": list(spacing), "matrix": {"filename": "matrix.dat", "shape": list(vol.shape),
                                                  "dtype": "int16"}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        _add(tf, "tmpabc/main.plist", plistlib.dumps(plist))
        _add(tf, "tmpabc/mask_0.dat", b"\0" * 64)
        _add(tf, "tmpabc/matrix.dat", np.ascontiguousarray(vol[:, ::-1, :]).astype("<i2").tobytes())
    return buf.getvalue()


def _ar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A Debian-style ar archive (the layout fetch.deb_member documents)."""
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, data in members:
            f.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode("ascii"))
            f.write(data + (b"\n" if len(data) % 2 else b""))


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, data in files.items():
            _add(tf, name, data)
    return buf.getvalue()


CONTROL = (b"Package: invesalius-examples\nVersion: 0.0-test\nArchitecture: all\nMaintainer: test <t@t>\n"
           b"Description: stand-in\n")


def write_deb(path: Path, tmp: Path, inv3: bytes, use_dpkg: bool | None = None) -> Path:
    """invesalius-examples_0.0-test_all.deb holding Cranium.inv3 (dpkg-deb -b when present and
    use_dpkg is not False, else the ar writer)."""
    member = fetch.FILES["Cranium"].member
    if use_dpkg is None:
        use_dpkg = shutil.which("dpkg-deb") is not None
    if use_dpkg:
        root = tmp / "debroot"
        (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
        (root / "DEBIAN" / "control").write_bytes(CONTROL)
        (root / member).parent.mkdir(parents=True, exist_ok=True)
        (root / member).write_bytes(inv3)
        (root / "usr/share/doc/invesalius-examples/copyright").write_text("GPL-2 stand-in\n")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(path)], check=True,
                       capture_output=True)
    else:
        _ar(path, [("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"./control": CONTROL})),
                   ("data.tar.xz", _tar_xz({"./usr/share/doc/invesalius-examples/copyright": b"GPL-2\n",
                                            "./" + member: inv3}))])
    return path


def make_downloads(folder: Path, use_dpkg: bool | None = None) -> dict[str, bytes]:
    """folder/ with pyradiomics-3.0.1.tar.gz and invesalius-examples_0.0-test_all.deb (stand-ins);
    returns {file key: bytes of the file inside} (for use_standins)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = write_sdist(folder / fetch.SDIST, folder.parent / (folder.name + "_nrrd"))
    files["Cranium"] = inv3_bytes(volume("Cranium"))
    write_deb(folder / "invesalius-examples_0.0-test_all.deb", folder.parent / (folder.name + "_deb"),
              files["Cranium"], use_dpkg)
    return files


def use_standins(monkeypatch, files: dict[str, bytes], cache: Path) -> None:
    """Point the package at the stand-ins: cache folder, checksums and sizes, scan shapes."""
    monkeypatch.setenv(fetch.ENV, str(cache))
    for k, data in files.items():
        monkeypatch.setitem(fetch.FILES, k, dataclasses.replace(fetch.FILES[k], size=len(data),
                                                                sha256=hashlib.sha256(data).hexdigest()))
    for name, scans in list(realdata.SCANS.items()):
        monkeypatch.setitem(realdata.SCANS, name, tuple(
            dataclasses.replace(s, shape=(s.shape[0], SIZES[s.key], SIZES[s.key])) for s in scans))
