"""`scoreinv data inspect` / `scoreinv data fetch` / `scoreinv data phantom3d`: show what a dataset spec
would load, fetch the real scans of the built-in datasets ct-real and mri-real, and write a procedural
3-D phantom as a NIfTI volume (thin layer over scoreinv.data)."""
from __future__ import annotations

import argparse
import json
import math

import torch

from ..atomic import check_new_output
from ..data import BUILTIN_DATASETS, DESCRIPTIONS, build_dataset, phantom3d
from ..data import fetch as fetching
from ..data.base import check_image_size
from ..data.folder import check_fractions
from ..data.readers import skipped_line
from ..data.registry import MRI_DATASETS
from ..errors import ScoreinvError, check_int, check_range
from ..imaging import save_grid
from ..physics.mar_spectra import HU_MAX, HU_MIN

HELP = """Inspect training data: what would be loaded, and how it would be split.

  scoreinv data inspect /data/lidc --size 128            # DICOM series, HU window
  scoreinv data inspect /data/brats --axis 0 --normalize minmax
  scoreinv data inspect scan.nii.gz --values             # also read the value ranges
  scoreinv data inspect phantoms --size 64 --preview phantoms.png
  scoreinv data inspect ct-real --size 256               # real scans: run `scoreinv data fetch ct-real` first
  scoreinv data inspect phantom3d --size 64 --split test # procedural 3-D phantom volumes

PATH is a folder or a file (DICOM series, NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, InVesalius .inv3,
fastMRI HDF5 .h5, PNG/TIFF/JPEG, NumPy .npy/.npz), or a built-in dataset: phantoms (textured CT
phantoms), ellipses (plain CT phantoms), brain (MNI152 template slices), ct-real (real CT of 3
patients), mri-real (real brain MRI of 2 patients), the last two fetched once with `scoreinv
data fetch` and split by patient into fixed slabs (the table shows the slice numbers), mri-mix
(template slices and mri-real's brain1 for training, docs/data.md), or phantom3d (procedural 3-D CT
phantoms: the slices of whole volumes in order, for volume metrics and coupling; `scoreinv data
phantom3d` writes one as NIfTI). A local folder with one of these names must be written with a path
(./phantoms).

For files it lists the volumes found (name, kind, shape (D, H, W), HU or not, split), the
number of slices, and the split sizes. Volumes are split by patient (DICOM PatientID, else the
first folder under PATH) with a seeded, deterministic assignment (80/10/10 by default), so the
slices of one patient never straddle splits. Slices are normalised per volume to [0, 1]
(auto: HU window for CT, min-max otherwise) and resized to SIZE x SIZE keeping the physical
aspect ratio (padded by default).
"""

FETCH_HELP = """Fetch the real scans of the built-in datasets ct-real and mri-real into the data cache.

  scoreinv data fetch ct-real                       # pyradiomics sdist (pip) + invesalius-examples (apt-get)
  scoreinv data fetch mri-real                      # pyradiomics sdist only
  scoreinv data fetch all --from downloads          # offline: a folder with the sdist and the .deb

ct-real: chest CT lung1 and lung2 from the source distribution of pyradiomics 3.0.1 on PyPI
(BSD-3-Clause; `pip download` through this Python), and the head CT Cranium.inv3 from the Debian
package invesalius-examples (GPL-2; `apt-get download`, so Debian/Ubuntu). mri-real: the T1-weighted
brain MRI brain1 and brain2 from the same sdist. Only these image files are kept (about 53 MB),
in $SCOREINV_DATA if set, else ~/.cache/scoreinv/data. Every file is checked against the SHA-256
of the released file; a fetch writes into a temporary folder of the cache and moves verified files
into place only when all are verified, so a failure leaves the cache as it was. Files already
cached are verified and reused; --overwrite fetches them again (e.g. after a damaged file was
reported). --from PATH uses local copies instead of the network: pyradiomics-3.0.1.tar.gz, an
invesalius-examples_*.deb, the extracted files (lung1_image.nrrd, Cranium.inv3, ...), or a folder
holding any of them. See docs/data.md.
"""

PHANTOM3D_HELP = """Write a procedural 3-D CT phantom (docs/design.md §9.4: ellipsoids with 3-D texture, in HU) as a
NIfTI volume, to simulate and reconstruct as a whole volume:

  scoreinv data phantom3d --out vol.nii.gz --slices 16 --size 64 --seed 0
  scoreinv simulate --task ct --views 23 --intensity hu --input vol.nii.gz --out vol.npz
  scoreinv reconstruct --checkpoint ct64 --measurements vol.npz --solver diffpir --coupling ztv --out vol_ztv.nii.gz

The volume has --slices slices of --size x --size pixels of --pixel-size mm, --z-spacing pixels apart
(1: isotropic voxels), slices inferior to superior, values in HU over the window [-1024, 3200] (the
[0, 1] image scale of the models; `simulate --intensity hu` reads it back to the same images). The
same --seed gives the same volume on every machine; the body kind (head, chest, abdomen) is drawn
from it unless --kind is given. These volumes are the built-in dataset phantom3d's (whose splits draw
their own seeds).
"""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="inspect datasets, fetch the real scans of ct-real/mri-real, write a "
                              "3-D phantom",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("inspect", help="print the volumes, slices and splits a dataset spec would load",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("path", metavar="PATH", help="folder, file, or built-in name (phantoms, ellipses, brain, "
                   "ct-real, mri-real, mri-mix, phantom3d)")
    q.add_argument("--size", type=int, default=64, help="model image size S: slices become S x S (default 64)")
    q.add_argument("--split", choices=("train", "val", "test", "all"), default="train",
                   help="split to describe in detail (default train; 'all' for folders only)")
    q.add_argument("--seed", type=int, default=0, help="seed of the split assignment / procedural sets (default 0)")
    q.add_argument("--axis", type=int, choices=(0, 1, 2), help="slice axis of (D, H, W) volumes (default 0)")
    q.add_argument("--normalize", choices=("auto", "minmax", "window"),
                   help="per-volume scaling to [0, 1]: auto (HU window for CT, min-max otherwise; default), "
                        "minmax, window (HU window --hu-min..--hu-max)")
    q.add_argument("--hu-min", type=float, help=f"HU mapped to 0 (default {HU_MIN:g})")
    q.add_argument("--hu-max", type=float, help=f"HU mapped to 1 (default {HU_MAX:g})")
    q.add_argument("--fit", choices=("pad", "crop"), help="keep the aspect ratio by padding (default) or "
                   "centre-cropping to a square")
    q.add_argument("--split-by", choices=("patient", "volume"), help="unit of the split: patient (default) "
                   "or volume")
    q.add_argument("--fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions (default 0.8 0.1 0.1)")
    q.add_argument("--key", help="dataset inside HDF5 files or array inside .npz files to read")
    q.add_argument("--values", action="store_true", help="also read every volume to report its value range")
    q.add_argument("--max-volumes", type=int, default=50, help="list at most this many volumes (default 50)")
    q.add_argument("--preview", metavar="PNG", help="write a grid of 16 images of the split to PNG")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --preview file")
    q.add_argument("--json", action="store_true", help="print the description as JSON")
    q.set_defaults(func=run_inspect)
    f = sub.add_parser("fetch", help="download the real scans of ct-real / mri-real into the data cache",
                       description=FETCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("name", metavar="NAME", help="ct-real, mri-real or all")
    f.add_argument("--from", dest="source", metavar="PATH", help="local sdist, .deb, extracted files, or a folder "
                   "of them, instead of downloading")
    f.add_argument("--overwrite", action="store_true", help="fetch and replace files already in the cache")
    f.set_defaults(func=run_fetch)
    v = sub.add_parser("phantom3d", help="write a procedural 3-D CT phantom as a NIfTI volume (HU)",
                       description=PHANTOM3D_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--out", required=True, help="output NIfTI volume (.nii or .nii.gz)")
    v.add_argument("--slices", type=int, default=16, help="number of slices (default 16)")
    v.add_argument("--size", type=int, default=64, help="slices are SIZE x SIZE pixels (default 64)")
    v.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    v.add_argument("--pixel-size", type=float, default=1.0, help="pixel side in mm (default 1)")
    v.add_argument("--z-spacing", type=float, default=1.0, help="slice spacing in pixels (default 1: isotropic "
                   "voxels)")
    v.add_argument("--kind", choices=phantom3d.KINDS, help="body kind (default: drawn from the seed)")
    v.add_argument("--plain", action="store_true", help="no texture: piecewise-constant ellipsoids")
    v.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    v.set_defaults(func=run_phantom3d)
    return p


def run_phantom3d(args) -> int:
    if not str(args.out).lower().endswith((".nii", ".nii.gz")):
        raise ScoreinvError(f"--out {args.out}: expected a .nii or .nii.gz file name")
    depth = check_int("--slices", args.slices, 1, 4096)
    size = check_image_size(args.size, "--size")
    check_int("--seed", args.seed, 0)
    if not math.isfinite(args.pixel_size) or args.pixel_size <= 0:
        raise ScoreinvError(f"--pixel-size = {args.pixel_size:g}: expected a positive number (mm)")
    z = check_range("--z-spacing", args.z_spacing, 1e-3)
    if not math.isfinite(z):
        raise ScoreinvError(f"--z-spacing = {z:g}: expected a finite number of pixels")
    check_new_output(args.out, overwrite=args.overwrite, flag="--out")
    vol = phantom3d.phantom_volume(depth, size, args.seed, textured=not args.plain, z_spacing=z, kind=args.kind)
    phantom3d.write_nifti(args.out, vol, pixel_mm=args.pixel_size, z_spacing=z, overwrite=args.overwrite,
                          description=f"scoreinv phantom3d seed {args.seed}")
    print(f"wrote {args.out}: phantom3d seed {args.seed}{f' ({args.kind})' if args.kind else ''}, {depth} slice(s) "
          f"of {size}x{size}, pixel {args.pixel_size:g} mm, slices {args.pixel_size * z:g} mm apart, HU window "
          f"[{HU_MIN:g}, {HU_MAX:g}]{', plain' if args.plain else ''}")
    return 0


def run_fetch(args) -> int:
    if args.name not in fetching.FETCH_NAMES:
        raise ScoreinvError(f"NAME {args.name!r}: expected one of {', '.join(fetching.FETCH_NAMES)}")
    print(f"data cache {fetching.cache_dir()}")
    fetching.fetch(args.name, source=args.source, overwrite=args.overwrite, log=print)
    return 0


def _options(args) -> dict:
    opts = {"axis": args.axis, "normalize": args.normalize, "hu_min": args.hu_min, "hu_max": args.hu_max,
            "fit": args.fit, "split_by": args.split_by,
            "fractions": tuple(args.fractions) if args.fractions else None}
    if args.key is not None:
        opts["h5_key" if not args.path.lower().endswith(".npz") else "npz_key"] = args.key
    if args.path in BUILTIN_DATASETS:
        given = sorted(k for k in ("axis", "normalize", "fit", "split_by", "fractions", "h5_key", "npz_key")
                       if opts.get(k) is not None)
        if given:
            raise ScoreinvError(f"option(s) {', '.join(given)} apply to files only, not to {args.path}")
        opts = {k: v for k, v in opts.items() if k in ("hu_min", "hu_max")}
        if args.path in MRI_DATASETS and (args.hu_min is not None or args.hu_max is not None):
            raise ScoreinvError(f"--hu-min/--hu-max apply to CT data, not to {args.path}")
        if args.path == "ct-real" and (args.hu_min is not None or args.hu_max is not None):
            raise ScoreinvError("--hu-min/--hu-max: ct-real always uses the reference window "
                                f"[{HU_MIN:g}, {HU_MAX:g}] HU")
    return opts


def _fmt_range(r) -> str:
    return f"[{r[0]:.6g}, {r[1]:.6g}]"


def run_inspect(args) -> int:
    check_int("--size", args.size, lo=8, hi=4096)
    check_int("--max-volumes", args.max_volumes)
    if args.fractions is not None:
        check_fractions(args.fractions, "--fractions")
    lo = HU_MIN if args.hu_min is None else args.hu_min
    hi = HU_MAX if args.hu_max is None else args.hu_max
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ScoreinvError(f"--hu-min {lo:g} / --hu-max {hi:g}: expected finite values with --hu-min < --hu-max")
    if args.preview:
        check_new_output(args.preview, overwrite=args.overwrite, flag="--preview", inputs=[args.path])
    ds = build_dataset(args.path, args.split, args.size, seed=args.seed, **_options(args))
    d = ds.describe(values=True) if args.values and hasattr(ds, "refs") else ds.describe()
    if args.preview:
        x = ds.sample_batch(min(16, len(ds)), torch.Generator().manual_seed(args.seed))
        save_grid(x, args.preview)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    print(f"dataset   {d['name']} ({d['kind']})")
    print(f"split     {d['split']}: {d['images']} image(s) of {d['image_size']}x{d['image_size']}, values in [0, 1]")
    if "scans" in d:
        _print_real(d)
    elif not isinstance(d.get("volumes"), list):       # procedural sets (phantom3d: a count of volumes)
        print(f"about     {DESCRIPTIONS.get(d['name'], d['kind'])}")
        for k, v in d.items():
            if k not in ("name", "kind", "split", "images", "image_size"):
                print(f"{k:<9} {v}" if len(k) < 9 else f"{k} {v}")
    else:
        print(f"slicing   axis {d['axis']}, normalize {d['normalize']} (HU window {d['hu_window']}), fit {d['fit']}")
        print(f"splits    by {d['split_by']}, fractions {d['fractions']}, seed {d['seed']}")
        for s in ("train", "val", "test", "all"):
            print(f"  {s:<6} {d['sizes'][s]['volumes']:>5} volume(s) {d['sizes'][s]['slices']:>7} slice(s)")
        vols = d["volumes"]
        more = f" (first {args.max_volumes} listed)" if len(vols) > args.max_volumes else ""
        print(f"volumes   {len(vols)}{more}")
        for v in vols[:args.max_volumes]:
            extra = f" range {_fmt_range(v['range'])}" if "range" in v else ""
            extra += f" {v['modality']}" if "modality" in v else ""
            extra += f" dataset {v['dataset']}" if "dataset" in v else ""
            print(f"  {v['name']}: {v['kind']} {tuple(v['shape'])} {'HU' if v['hu'] else 'not HU'} "
                  f"-> {v['slices']} slice(s), {v['split']}, {v['normalize']}{extra}")
        if ds.skipped:
            print(skipped_line(ds.skipped, args.path))
    if args.preview:
        print(f"preview   {args.preview}")
    return 0


def _print_real(d: dict) -> None:
    """The patients, their geometry and the slice table of a real dataset (ct-real, mri-real)."""
    print(f"about     {DESCRIPTIONS[d['name']]}")
    print(f"values    {d['normalize']}")
    lo, hi = d["pixel_mm"]
    print(f"pixels    {lo:.4g}{'' if hi == lo else f'-{hi:.4g}'} mm at {d['image_size']}x{d['image_size']} (this split)")
    print(f"cache     {d['cache']}")
    print(f"splits    by {d['split_by']}")
    print(f"volumes   {len(d['scans'])}")
    for s in d["scans"]:
        shape = "x".join(str(v) for v in s["shape"])
        print(f"  {s['patient']:<8} {s['what']}, {s['package']} ({s['licence']}), {shape} (D, H, W), "
              f"pixel {s['pixel_mm']:.4g} mm, slice {s['slice_mm']:g} mm, {'HU' if s['hu'] else 'not HU'}, "
              f"{s['pixel_mm_at_size']:.4g} mm at {d['image_size']}")
    print("slices    (axial, 0 = inferior; inclusive ranges)")
    print(f"  {'patient':<8} {'train':<16} {'val':<10} {'test':<10} gap (read by no split)")
    for s in d["scans"]:
        r = s["ranges"]
        print(f"  {s['patient']:<8} {r['train']:<16} {r['val']:<10} {r['test']:<10} {r['gap']}")
    z = d["sizes"]
    print(f"  {'slices':<8} {z['train']:<16} {z['val']:<10} {z['test']:<10} {z['gap']}")
