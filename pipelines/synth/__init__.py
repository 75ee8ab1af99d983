"""Synthetic phantom studies, written as DICOM in the dataset layout training reads."""
