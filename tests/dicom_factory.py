"""Small DICOM files for the reader tests: single-frame slices, enhanced multi-frame CT, and a
lossless JPEG (process 14, selection value 1) encoder, for which pydicom has no encoder."""
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    MRImageStorage,
    generate_uid,
)


def _base(sop, rows, cols, bits=16, signed=False, photometric="MONOCHROME2"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, int(signed)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    return ds


def slice_ds(stored, iop=(1, 0, 0, 0, 1, 0), ipp=(0.0, 0.0, 0.0), spacing=(1.0, 1.0), slope=1.0,
             intercept=-1024.0, modality="CT", series=None, photometric="MONOCHROME2", bits=16, number=None,
             thickness=1.0):
    """One single-frame slice of stored values `stored` (H, W) uint16; slope/intercept None: left out."""
    stored = np.asarray(stored, dtype=np.uint16)
    ds = _base(CTImageStorage if modality == "CT" else MRImageStorage, *stored.shape, bits=bits,
               photometric=photometric)
    ds.Modality, ds.SeriesInstanceUID, ds.PatientID = modality, series or generate_uid(), "P1"
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    if ipp is not None:
        ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.PixelSpacing, ds.SliceThickness = [float(v) for v in spacing], thickness
    if number is not None:
        ds.InstanceNumber = number
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = stored.tobytes()
    return ds


def save(ds, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def enhanced_ct(frames, positions, rescales, iop=(1, 0, 0, 0, 1, 0), shared_rescale=None):
    """Enhanced CT: frames (F, H, W) uint16 with per-frame positions and (slope, intercept) in the
    Per-frame Functional Groups (or one `shared_rescale` in the Shared group); none at the top level."""
    frames = np.asarray(frames, dtype=np.uint16)
    ds = _base(EnhancedCTImageStorage, *frames.shape[1:])
    ds.Modality, ds.SeriesInstanceUID, ds.PatientID = "CT", generate_uid(), "P1"
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    ori, meas = Dataset(), Dataset()
    ori.ImageOrientationPatient = [float(v) for v in iop]
    meas.PixelSpacing, meas.SliceThickness = [1.0, 1.0], 1.0
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [ori], [meas]
    if shared_rescale is not None:
        t = Dataset()
        t.RescaleSlope, t.RescaleIntercept, t.RescaleType = *shared_rescale, "HU"
        shared.PixelValueTransformationSequence = [t]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for i, p in enumerate(positions):
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in p]
        item.PlanePositionSequence = [pos]
        if rescales is not None:
            t = Dataset()
            t.RescaleSlope, t.RescaleIntercept, t.RescaleType = *rescales[i], "HU"
            item.PixelValueTransformationSequence = [t]
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = per
    ds.PixelData = frames.tobytes()
    return ds


# --- lossless JPEG, process 14, selection value 1 (ITU T.81 Annex H) ---------------------------
def _marker(code: int, body: bytes) -> bytes:
    return bytes([0xFF, code]) + (len(body) + 2).to_bytes(2, "big") + body


def jpeg_lossless_sv1(img: np.ndarray, precision: int = 16) -> bytes:
    """Encode a 2-D image (H, W) of unsigned integers < 2**precision. Prediction: the left
    neighbour (first row), the upper one (first column), 2**(P-1) for the first pixel; the
    difference category SSSS (0..16) is coded with a 5-bit code equal to SSSS, then SSSS extra
    bits (negative differences as d - 1 in SSSS bits; none for 0 and 16)."""
    x = np.asarray(img, dtype=np.int64)
    h, w = x.shape
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:], pred[1:, 0], pred[1:, 1:] = x[0, :-1], x[:-1, 0], x[1:, :-1]
    diff = (x - pred) % 65536
    diff[diff >= 32768] -= 65536
    bits = []
    for d in diff.ravel().tolist():
        s = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(s, "05b"))
        if 0 < s < 16:
            bits.append(format(d if d > 0 else d + (1 << s) - 1, f"0{s}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)
    sof = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17                                            # 17 codes of length 5
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])                        # Ss = 1: predictor 1
    return b"\xff\xd8" + _marker(0xC3, sof) + _marker(0xC4, dht) + _marker(0xDA, sos) + bytes(data) + b"\xff\xd9"


def as_jpeg_lossless(ds):
    """`ds` (single frame, uint16) with its pixel data encoded as JPEG Lossless SV1."""
    stored = ds.pixel_array
    ds.PixelData = encapsulate([jpeg_lossless_sv1(stored)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds
