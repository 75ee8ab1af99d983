"""triage/worker/offsets.py: commits never pass unfinished work."""
from triage.bus.base import TopicPartition
from triage.worker.offsets import OffsetTracker

TP = TopicPartition("triage.studies", 0)


def test_out_of_order_completion_commits_only_up_to_the_lowest_unfinished():
    t = OffsetTracker()
    for off in range(5):
        t.add(TP, off)
    t.done(TP, 3)
    t.done(TP, 1)
    assert t.committable() == {TP: 0}
    t.done(TP, 0)
    assert t.committable() == {TP: 2}
    t.mark_committed({TP: 2})
    assert t.committable() == {}
    t.done(TP, 2)
    t.done(TP, 4)
    assert t.committable() == {TP: 5}


def test_revoked_partitions_are_never_committed_again():
    t = OffsetTracker()
    t.add(TP, 7)
    t.forget({TP})
    t.done(TP, 7)
    assert t.committable() == {} and t.in_flight() == 0


def test_resume_point_is_the_first_unfinished_offset():
    t = OffsetTracker()
    assert t.resume_point(TP) is None
    for off in (4, 5, 6):
        t.add(TP, off)
    t.done(TP, 4)
    t.done(TP, 6)
    assert t.resume_point(TP) == 5
    t.done(TP, 5)
    assert t.resume_point(TP) == 7


def test_the_oldest_pending_offset_age_is_what_blocks_the_commit():
    t = OffsetTracker()
    t.add(TP, 0)
    t.add(TP, 1)
    now = __import__("time").monotonic()
    assert 0 <= t.oldest_pending_age(now + 5)[TP] - 5 < 1
    t.done(TP, 0)
    t.done(TP, 1)
    assert t.oldest_pending_age() == {TP: 0.0}
