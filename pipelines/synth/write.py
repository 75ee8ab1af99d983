"""Write phantoms in the one dataset layout the training pipeline reads:

    <dataset>/labels.csv                      study_id,label,finding,kind,mask,lesion_ml,slice_thickness_mm
    <dataset>/studies/<study_id>/NNNN.dcm     one CT series, or one DX image, per study (or <study_id>.nii.gz)
    <dataset>/masks/<study_id>.nii.gz         lesion mask on the study's grid (optional per study)

A hospital's own labelled data goes into the same layout; nothing else changes.
"""
from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from pipelines.synth.common import Phantom

LABEL_FIELDS = ("study_id", "label", "finding", "kind", "mask", "lesion_ml", "slice_thickness_mm")


def _header(ph: Phantom, study_id: str, root: str, sop_class: str, index: int) -> Dataset:
    """What every image of a phantom study carries: UIDs, patient, study, series and equipment."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = _sop_uid(root, index)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if ph.modality == "CT" else ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = ph.modality
    ds.Manufacturer = "triage synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC PHANTOM"
    ds.SeriesDescription = ph.description
    ds.PatientName = f"Phantom^{study_id}"
    ds.PatientID = f"PH-{study_id}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = ph.body_part
    ds.KVP = 120
    if ph.contrast:
        ds.ContrastBolusAgent = "IODINE"
        ds.ContrastBolusRoute = "IV"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[root, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[root, "series"])
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def ct_slice(ph: Phantom, study_id: str, root: str, stored: np.ndarray, i: int) -> Dataset:
    """Image ``i`` of a phantom's axial CT series, complete: what pydicom would write for it."""
    _, ny, nx = stored.shape
    dz, dy, dx = ph.spacing_zyx
    ds = _header(ph, study_id, root, CTImageStorage, i)
    ds.SliceThickness = dz
    ds.SpacingBetweenSlices = dz
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[root, "frame"])
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PositionReferenceIndicator = ""
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [dy, dx]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = (300, 600) if ph.contrast else (40, 80)
    ds.update(_per_image(ph, root, stored, i))
    return ds


def _per_image(ph: Phantom, root: str, stored: np.ndarray, i: int) -> Dataset:
    """The elements in which image ``i`` of a CT series differs from the others (``PER_IMAGE``)."""
    nz, ny, nx = stored.shape
    dz, dy, dx = ph.spacing_zyx
    ds = Dataset()
    ds.SOPInstanceUID = _sop_uid(root, i)
    ds.InstanceNumber = i + 1
    ds.ImagePositionPatient = [round(v, 4) for v in (-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, (i - (nz - 1) / 2) * dz)]
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.PixelData = stored[i].tobytes()
    return ds


# what differs between the images of one series; everything else is encoded once per series
PER_IMAGE = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")


class SeriesEncoder:
    """Encodes the images of one series as pydicom writes them (Explicit VR Little Endian),
    byte for byte, but encodes the elements they share once: writing element by element cost
    more than drawing the phantom. ``first`` is any complete image of the series."""

    def __init__(self, first: Dataset):
        per_image = {Tag(keyword) for keyword in PER_IMAGE}
        self.meta = first.file_meta
        self.charset = convert_encodings(first.get("SpecificCharacterSet"))
        self.parts: list[bytes | DataElement] = []  # encoded runs of shared elements; per-image slots
        run = Dataset()
        # as the file will hold them: in tag order, with ambiguous VRs resolved (pixel data is OW
        # for 16 bits), which a per-image element alone cannot resolve
        for elem in correct_ambiguous_vr(copy.deepcopy(first), is_little_endian=True):
            if elem.tag in per_image:
                if len(run):
                    self.parts.append(_encode(run, self.charset))
                    run = Dataset()
                self.parts.append(elem)
            else:
                run.add(elem)
        if len(run):
            self.parts.append(_encode(run, self.charset))

    def encode(self, image: Dataset) -> bytes:
        """The file for ``image``, a dataset holding the per-image elements (``PER_IMAGE``)."""
        meta = FileMetaDataset(self.meta)
        meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
        fp = _buffer()
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        for part in self.parts:
            if isinstance(part, bytes):
                fp.write(part)
            else:
                one = Dataset()
                one.add(DataElement(part.tag, part.VR, image[part.tag].value))
                fp.write(_encode(one, self.charset))
        return fp.getvalue()


def _buffer() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    return fp


def _encode(ds: Dataset, charset: list[str]) -> bytes:
    fp = _buffer()
    write_dataset(fp, ds, parent_encoding=charset)
    return fp.getvalue()


def _sop_uid(root: str, index: int) -> str:
    return generate_uid(entropy_srcs=[root, "sop", str(index)])


def write_dicom_series(ph: Phantom, folder: Path, study_id: str, seed: int) -> None:
    """One axial CT series (UIDs, geometry, rescale, modality, body part, description, contrast),
    or for a radiograph (``ph.modality == "DX"``) one DX image."""
    folder.mkdir(parents=True, exist_ok=True)
    root = f"{seed}-{study_id}"
    if ph.modality == "DX":
        _write_radiograph(ph, folder, study_id, root)
        return
    padded = float(ph.hu.min()) < -1500.0  # a scanner's padding (-2000, -3024) beyond the reconstruction circle
    if padded:  # signed 16-bit, no offset, as many scanners write it
        stored = np.clip(np.rint(ph.hu), -32768, 32767).astype(np.int16)
    else:
        stored = np.clip(np.rint(ph.hu + 1024), 0, 4095).astype(np.uint16)
    first = ct_slice(ph, study_id, root, stored, 0)
    if padded:
        first.BitsStored, first.HighBit, first.PixelRepresentation, first.RescaleIntercept = 16, 15, 1, 0
    encoder = SeriesEncoder(first)
    (folder / "0000.dcm").write_bytes(encoder.encode(first))
    for i in range(1, stored.shape[0]):
        (folder / f"{i:04d}.dcm").write_bytes(encoder.encode(_per_image(ph, root, stored, i)))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _write_radiograph(ph: Phantom, folder: Path, study_id: str, root: str) -> None:
    """A DX image for presentation: PA chest, stored values as they are (log attenuation)."""
    _, ny, nx = ph.hu.shape
    _, dy, dx = ph.spacing_zyx
    ds = _header(ph, study_id, root, DigitalXRayImageStorageForPresentation, 0)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.DetectorType = "DIRECT"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = []
    ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
    ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
    ds.Rows, ds.Columns = ny, nx
    ds.ImagerPixelSpacing = ds.PixelSpacing = [dy, dx]
    # how the film is stored: 12-bit MONOCHROME2 with a full-range window, unless the phantom says
    bits = int(ph.extra.get("bits_stored", 12))
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PhotometricInterpretation = ph.extra.get("photometric", "MONOCHROME2")
    if ds.PhotometricInterpretation == "MONOCHROME1":
        ds.PresentationLUTShape = "INVERSE"
    window = ph.extra.get("window", (2048, 4096))
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.clip(np.rint(ph.hu[0]), 0, (1 << bits) - 1).astype(np.uint16).tobytes()
    ds.save_as(folder / "0000.dcm", enforce_file_format=True)


def write_mask(ph: Phantom, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(ph.mask.astype(np.uint8))
    dz, dy, dx = ph.spacing_zyx
    nz, ny, nx = ph.mask.shape
    image.SetSpacing((dx, dy, dz))
    image.SetOrigin((-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, -(nz - 1) / 2 * dz))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_labels(dataset: Path, rows: list[dict]) -> None:
    with open(dataset / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LABEL_FIELDS)
        w.writeheader()
        w.writerows(rows)


def write_study(ph: Phantom, dataset: Path, study_id: str, seed: int) -> dict:
    """The study's DICOM series and mask; returns its labels.csv row."""
    write_dicom_series(ph, dataset / "studies" / study_id, study_id, seed)
    mask_rel = ""
    if ph.mask.any():
        mask_rel = f"masks/{study_id}.nii.gz"
        write_mask(ph, dataset / mask_rel)
    row = {"study_id": study_id, "label": ph.label, "finding": ph.finding, "kind": ph.kind, "mask": mask_rel,
           "lesion_ml": f"{ph.lesion_ml:.3f}", "slice_thickness_mm": "" if ph.modality == "DX" else f"{ph.spacing_zyx[0]:g}"}
    return row
