"""triage/gateway/{config,state,store,outbox}.py without a network: the allow-list, study
versions, hostile headers, the durable write and the outbox. The real senders are in
test_receive.py."""
from __future__ import annotations

import json

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.helpers import ref
from triage.bus.memory import MemoryBroker, MemorySink
from triage.errors import ConfigError, InstanceRefused
from triage.events import RequestedPriority, parse_study_event
from triage.gateway.config import GatewaySettings, parse_allow
from triage.gateway.outbox import Publisher
from triage.gateway.state import Instance, StudyState
from triage.gateway.store import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, InstanceStore, read_header


def test_allow_list_matches_ae_titles_and_networks():
    settings = GatewaySettings(store="s", allow="CT1@10.1.0.0/16,MR2,*@192.168.5.7")
    assert settings.admits("CT1", "10.1.2.3")
    assert not settings.admits("CT1", "10.2.0.1")
    assert settings.admits("MR2", "127.0.0.1") and not settings.admits("MR2", "10.1.2.3")  # no host: loopback
    assert settings.admits("ANYONE", "192.168.5.7") and settings.admits("X", "::ffff:192.168.5.7")
    assert not settings.admits("ANYONE", "192.168.5.8")
    assert settings.host_admitted("10.1.9.9") and not settings.host_admitted("8.8.8.8")


def test_no_allow_list_means_any_ae_from_loopback_only():
    settings = GatewaySettings(store="s")
    assert settings.admits("WHATEVER", "127.0.0.1") and settings.admits("X", "::1")
    assert not settings.admits("WHATEVER", "10.0.0.1")


@pytest.mark.parametrize("overrides, message", [
    ({"allow": "WAY_TOO_LONG_AE_TITLE_X"}, "1 to 16"),
    ({"allow": "CT1@no-such-host.invalid"}, "does not resolve"),
    ({"ae_windows": "CT1=0"}, "AE=SECONDS"),
    ({"tls_cert": "cert.pem"}, "both a certificate and its key"),
    ({"window_s": "0"}, "quiet window"),
    ({"max_instance_bytes": "100", "max_study_bytes": "10"}, "at most max study bytes"),
    ({"store": None}, "needs a store"),
])
def test_settings_refuse_what_cannot_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        GatewaySettings.load({"store": "s", **overrides}, environ={})


def test_settings_come_from_the_environment_and_per_ae_windows():
    settings = GatewaySettings.load({"store": "s"}, environ={"TRIAGE_GATEWAY_WINDOW_S": "2.5",
                                                          "TRIAGE_GATEWAY_AE_WINDOWS": "SLOWCT=30"})
    assert settings.window_for("SLOWCT") == 30 and settings.window_for("OTHER") == 2.5


def _instance(ds_changes: dict, tmp_path, name="x.dcm"):
    ds = pydicom.dcmread(ref("CT_small.dcm"))
    for k, v in ds_changes.items():
        setattr(ds, k, v)
    path = tmp_path / name
    ds.save_as(path)
    return path


@pytest.mark.parametrize("uid", ["..", ".", "1.2/../../etc", "DOE^JOHN", ""])
def test_uids_that_are_not_uids_are_refused_before_anything_is_written(tmp_path, uid):
    path = _instance({"SeriesInstanceUID": uid}, tmp_path)
    with pytest.raises(InstanceRefused) as err:
        read_header(path)
    assert err.value.status == CANNOT_UNDERSTAND
    assert uid not in str(err.value) or uid in ("", ".")


def test_garbage_is_refused_as_unreadable(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\x00" * 200 + b"DICM" + b"\xff" * 50)
    with pytest.raises(InstanceRefused, match="UID|header"):
        read_header(path)


def test_order_fields_come_from_the_header_and_the_most_urgent_wins(tmp_path):
    item = Dataset()
    item.RequestedProcedurePriority = "STAT"
    path = _instance({"AccessionNumber": "A123", "RequestedProcedurePriority": "LOW",
                      "RequestAttributesSequence": [item]}, tmp_path)
    inst = read_header(path)
    assert inst.accession == "A123" and inst.requested_priority is RequestedPriority.STAT
    assert read_header(_instance({"AccessionNumber": "X" * 40}, tmp_path, "y.dcm")).accession is None


@pytest.fixture
def store(tmp_path):
    state = StudyState(tmp_path / "state.sqlite")
    yield InstanceStore(tmp_path / "store", state, max_instance_bytes=100_000, max_study_bytes=150_000)
    state.close()


def _spool(store, path):
    spooled = store.spool_path()
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(path.read_bytes())
    return spooled


def test_store_places_once_and_budgets_the_study(store, tmp_path):
    src = ref("CT_small.dcm")
    first = store.accept(_spool(store, src), 5.0)
    assert first.new and first.path.read_bytes() == src.read_bytes()
    again = store.accept(_spool(store, src), 5.0)
    assert not again.new and again.path == first.path
    second = store.accept(_spool(store, _instance({"SOPInstanceUID": "1.2.3.4"}, tmp_path)), 5.0)
    assert second.new
    with pytest.raises(InstanceRefused) as err:  # 39 kB each: the fourth would pass the 150 kB budget
        for i in range(5):
            store.accept(_spool(store, _instance({"SOPInstanceUID": f"1.2.3.5.{i}"}, tmp_path)), 5.0)
    assert err.value.kind == "study_budget" and err.value.status == OUT_OF_RESOURCES
    assert len(list(store.root.glob("*/*/*.dcm"))) == 3
    assert store.state.study_bytes(first.instance.study_uid) == sum(
        f.stat().st_size for f in store.root.glob("*/*/*.dcm"))


def test_versions_and_the_outbox(store, tmp_path):
    clock = [1000.0]
    broker = MemoryBroker()
    publisher = Publisher(store.state, lambda: MemorySink(broker), "studies", store.root, clock=lambda: clock[0])
    state = store.state

    def add(sop: str, priority=None):
        inst = Instance("1.2.3", "1.2.3.1", sop, 10, "ACC1", priority)
        return state.record(inst, clock[0], 5.0)

    assert add("1.1", RequestedPriority.HIGH) and not add("1.1")
    clock[0] += 4
    assert add("1.2", RequestedPriority.LOW)  # a later instance never lowers the order
    clock[0] += 4.9
    assert publisher.step() == 0  # still inside the window of the last arrival
    clock[0] += 0.2
    assert publisher.step() == 1
    assert add("1.3")  # after publication: version 2
    clock[0] += 6
    assert publisher.step() == 1
    events = [parse_study_event(m.value) for m in broker.messages("studies")]
    assert [e.requested_priority for e in events] == [RequestedPriority.HIGH, None]
    assert events[0].accession_number == "ACC1"
    assert events[1].received_at > events[0].received_at
    assert state.counts() == {"published": 2, "outbox": 0}


def test_outbox_keeps_what_the_broker_did_not_acknowledge(store):
    clock = [0.0]

    class Unacknowledged:
        def is_done(self):
            return True

        def error(self):
            return OSError("not acknowledged")

    class Refusing(MemorySink):
        def send(self, topic, key, value, headers=None):
            return Unacknowledged()

    publisher = Publisher(store.state, lambda: Refusing(MemoryBroker()), "studies", store.root, clock=lambda: clock[0])
    store.state.record(Instance("1.9", "1.9.1", "1.9.1.1", 10), 0.0, 1.0)
    clock[0] = 2.0
    assert publisher.step() == 0 and publisher.step() == 0
    assert store.state.counts() == {"queued": 1, "outbox": 1}
    assert json.loads(store.state.pending()[0].payload)["study_instance_uid"] == "1.9"
