"""Reading one file out of a Debian package (.deb) without installing it: with `dpkg-deb` when it is
installed, else from the `ar` layout with Python's tarfile (`deb_member`). Used by `fetch` for
the InVesalius examples package; written by hand because no maintained Python library reads .deb
archives (the `ar` layout is 60-byte headers, a few lines).
"""
from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from ..errors import ScoreinvError


def deb_member(deb: Path, member: str, dest: Path) -> bool:
    """Copy file `member` of the data archive of Debian package `deb` to `dest`; False if absent.

    A .deb is an `ar` archive ("!<arch>\\n", then per member a 60-byte header: name 16, mtime 12,
    uid 6, gid 6, mode 8, size 10 (decimal), "`\\n"; data padded to an even length) holding
    debian-binary, control.tar.* and data.tar.* (the files; gz, xz, bz2 or zst compressed).
    With dpkg-deb installed, `dpkg-deb --fsys-tarfile` unpacks data.tar.* (any compression);
    else this reads the ar layout and opens data.tar.* with tarfile (gz, xz, bz2; zst needs dpkg-deb).
    Only `member` is written: the package's other files are never extracted.
    """
    want = member.lstrip("./")
    if shutil.which("dpkg-deb"):
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        found = False
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
                found = _copy_member(tf, want, dest)
        except tarfile.TarError as e:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise ScoreinvError(f"{deb}: dpkg-deb cannot unpack it ({(err or [str(e)])[-1]}); expected a Debian "
                                "package (.deb)") from e
        finally:
            proc.stdout.close()
            if found:
                proc.kill()
            rc = proc.wait()
        if not found and rc != 0:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise ScoreinvError(f"{deb}: dpkg-deb --fsys-tarfile failed ({(err or ['exit ' + str(rc)])[-1]}); "
                                "expected a Debian package (.deb)")
        return found
    with open(deb, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise ScoreinvError(f"{deb}: not a Debian package (no ar archive header)")
        while True:
            head = fh.read(60)
            if len(head) < 60:
                raise ScoreinvError(f"{deb}: no data.tar member; expected a Debian package (.deb)")
            if head[58:60] != b"`\n":
                raise ScoreinvError(f"{deb}: damaged ar member header; expected a Debian package (.deb)")
            name = head[:16].decode("ascii", errors="replace").strip().rstrip("/")
            size = int(head[48:58].decode("ascii").strip() or 0)
            start = fh.tell()
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise ScoreinvError(f"{deb}: its data are zstd-compressed; install dpkg (dpkg-deb) to unpack "
                                        "them, or pass the extracted Cranium.inv3 with --from")
                data = io.BytesIO(fh.read(size))             # the package's files (tens of MB at most)
                if data.getbuffer().nbytes != size:
                    raise ScoreinvError(f"{deb}: {name} is cut short; the package is truncated")
                try:
                    with tarfile.open(fileobj=data, mode="r:*") as tf:
                        return _copy_member(tf, want, dest)
                except tarfile.TarError as e:
                    raise ScoreinvError(f"{deb}: cannot read {name} ({e}); the package may be truncated") from e
            fh.seek(start + size + (size & 1))


def _copy_member(tf: tarfile.TarFile, want: str, dest: Path) -> bool:
    """Copy the regular file `want` (path without a leading ./) of a tar stream to dest."""
    for m in tf:
        if m.isfile() and m.name.lstrip("./") == want:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(m) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
            return True
    return False
