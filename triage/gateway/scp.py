"""The DICOM front door: a pynetdicom C-ECHO and C-STORE SCP.

* An association is refused at request time unless its calling AE title and address match
  the allow-list, and unless it calls our own AE title.
* Every storage SOP class is accepted (image and non-image objects of a study are kept; the
  workers read what they can), in the uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG 2000
  and HTJ2K transfer syntaxes.
* Each dataset is spooled to disk by pynetdicom as it arrives (memory stays bounded, whatever
  the size), and the C-STORE response goes back only after the store's durable write: a
  success status means the instance is on disk.

pynetdicom serves each association on its own thread; the store is thread-safe.
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path

from triage import metrics
from triage.errors import InstanceRefused
from triage.events import study_ref
from triage.gateway.config import GatewaySettings
from triage.gateway.store import OUT_OF_RESOURCES, InstanceStore

log = logging.getLogger(__name__)

SUCCESS = 0x0000
_REJECT_PERMANENT, _BY_USER, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def transfer_syntaxes() -> list[str]:
    from pydicom import uid

    return [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
            uid.ExplicitVRBigEndian, uid.RLELossless, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit,
            uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless,
            uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K]


def server_ssl_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """TLS for both doors (DICOM TLS and HTTPS), from the certificate files in the settings."""
    if not settings.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(settings.tls_ca))
    return ctx


class StorageSCP:
    def __init__(self, settings: GatewaySettings, store: InstanceStore):
        from pynetdicom import AE, _config, evt
        from pynetdicom.presentation import AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        _config.STORE_RECV_CHUNKED_DATASET = True  # spool to disk as fragments arrive, never whole in memory
        _config.LOG_HANDLER_LEVEL = "none"
        self.settings, self.store = settings, store
        ae = AE(ae_title=settings.ae_title)
        ae.require_called_aet = True
        ae.maximum_associations = 16
        ae.maximum_pdu_size = 1 << 20
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, 120, 120
        syntaxes = transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        self._ae = ae
        self._handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                          (evt.EVT_C_STORE, self._on_store)]
        self._server = None

    def start(self) -> int:
        self._server = self._ae.start_server((self.settings.host, self.settings.port), block=False,
                                             evt_handlers=self._handlers,
                                             ssl_context=server_ssl_context(self.settings))
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        self._ae.shutdown()

    def _on_requested(self, event) -> None:
        requestor = event.assoc.requestor
        calling = (requestor.primitive.calling_ae_title or "").strip()
        if not self.settings.admits(calling, requestor.address):
            reason = "calling_ae" if self.settings.host_admitted(requestor.address) else "host"
            metrics.GW_ASSOCIATIONS_REFUSED.labels(reason).inc()
            log.warning("association from %s refused: %s not on the allow-list", requestor.address,
                        "address" if reason == "host" else "calling AE title")
            event.assoc.acse.send_reject(_REJECT_PERMANENT, _BY_USER, _CALLING_AE_NOT_RECOGNISED)
            event.assoc.kill()  # returns once the rejection has left; then the socket is closed

    def _on_store(self, event) -> int:
        spooled = Path(event.dataset_path)
        calling = (event.assoc.requestor.ae_title or "").strip()
        try:
            stored = self.store.accept(spooled, self.settings.window_for(calling),
                                       expected_sop=str(event.request.AffectedSOPInstanceUID or ""))
        except InstanceRefused as exc:
            metrics.GW_INSTANCES.labels("dimse", "refused").inc()
            metrics.GW_REFUSED.labels(exc.kind).inc()
            log.warning("C-STORE from %s refused (0x%04X): %s", event.assoc.requestor.address, exc.status, exc)
            return exc.status
        except Exception as exc:  # noqa: BLE001 - the sender must get a status, never a dropped association
            metrics.GW_INSTANCES.labels("dimse", "refused").inc()
            metrics.GW_REFUSED.labels("internal").inc()
            log.error("C-STORE failed (%s); refused with 0x%04X", type(exc).__name__, OUT_OF_RESOURCES)
            return OUT_OF_RESOURCES
        finally:
            spooled.unlink(missing_ok=True)
        metrics.GW_INSTANCES.labels("dimse", "stored" if stored.new else "duplicate").inc()
        if stored.new:
            metrics.GW_BYTES.labels("dimse").inc(stored.instance.bytes)
        log.debug("instance of study %s stored", study_ref(stored.instance.study_uid))
        return SUCCESS
