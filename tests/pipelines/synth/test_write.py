"""pipelines/synth/write.py: a series written with its shared elements encoded once is, file
for file, what pydicom writes for each complete image."""
from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom

from pipelines.synth.head import head_cta
from pipelines.synth.write import ct_slice, write_dicom_series


def test_each_written_image_is_byte_for_byte_what_pydicom_writes_for_the_complete_image(tmp_path):
    ph = head_cta(np.random.default_rng([8, 1]), True, matrix=32)  # contrast tags and a flap of values
    write_dicom_series(ph, tmp_path, "s8-0001", 8)
    files = sorted(tmp_path.iterdir())
    stored = np.clip(np.rint(ph.hu + 1024), 0, 4095).astype(np.uint16)
    assert len(files) == stored.shape[0] > 2
    for i, path in enumerate(files):
        expected = BytesIO()
        ct_slice(ph, "s8-0001", "8-s8-0001", stored, i).save_as(expected, enforce_file_format=True)
        assert path.read_bytes() == expected.getvalue(), path.name
    last = pydicom.dcmread(files[-1])
    assert last.InstanceNumber == len(files) and last.file_meta.MediaStorageSOPInstanceUID == last.SOPInstanceUID
    assert np.array_equal(last.pixel_array, stored[-1])
