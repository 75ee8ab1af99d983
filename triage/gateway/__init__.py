"""The DICOM ingest gateway: receives instances over C-STORE and STOW-RS, stores them
durably under ``<store>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
decides by a quiet window when a study is complete, and publishes one study event per
complete study version through a durable outbox. It knows nothing of models.

* :mod:`.config`: the gateway's settings, read once and validated together.
* :mod:`.state`: the SQLite record of instances, study versions and the outbox.
* :mod:`.store`: header checks, budgets and the durable write of one instance.
* :mod:`.outbox`: complete studies to study events to Kafka, at least once.
* :mod:`.scp` and :mod:`.stow`: the DICOM (pynetdicom) and DICOMweb front doors.
* :mod:`.service`: start-up and the written shutdown sequence.
"""
