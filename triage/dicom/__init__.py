"""DICOM in: find the series of a study folder and decode them to volumes."""
from triage.dicom.decode import Volume, decode_series
from triage.dicom.scan import SeriesInfo, scan_study

__all__ = ["SeriesInfo", "Volume", "decode_series", "scan_study"]
