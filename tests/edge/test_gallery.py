"""Gallery (SQLite + 1:N search) and tracker contracts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from dangol_edge.config import TrackerConfig
from dangol_edge.gallery import Gallery, UnknownCustomer
from dangol_edge.tracker import Observation, Tracker
from dangol_protocol import Consent


def unit(rng, n, d=512):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_enroll_is_all_or_nothing(gallery):
    with pytest.raises(ValueError, match="embeddings"):
        gallery.enroll("Ana", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="name"):
        gallery.enroll("  ", unit(np.random.default_rng(0), 1))
    assert gallery.customers() == []
    assert gallery.db["templates"].count == 0


def test_embedding_size_must_match_the_models_templates(gallery):
    rng = np.random.default_rng(3)
    gallery.enroll("Ana", unit(rng, 1, 512))
    with pytest.raises(ValueError, match=r"\(K, 512\)"):
        gallery.enroll("Ben", unit(rng, 1, 128))  # same model sha, other size: refused, nothing written
    assert [c.display_name for c in gallery.customers()] == ["Ana"]
    other = Gallery(gallery.path, "sha-b").open()  # another model may have another size
    ben = other.enroll("Ben", unit(rng, 2, 128))
    assert other.template_models()[ben.id] == {"sha-b": 2}
    other.close()


def test_match_threshold_and_margin(gallery):
    rng = np.random.default_rng(1)
    a, b = unit(rng, 2)
    ca = gallery.enroll("Ana", a[None])
    gallery.enroll("Bo", b[None])
    m = gallery.match(a, threshold=0.5, margin=0.05)[0]
    assert m.customer_id == ca.id and m.accepted and m.score == pytest.approx(1.0, abs=1e-5)
    # a probe halfway between two customers: above threshold but no margin -> not accepted
    mid = (a + b) / np.linalg.norm(a + b)
    m = gallery.match(mid, threshold=0.5, margin=0.05)[0]
    assert not m.accepted and abs(m.score - m.second) < 1e-5


def test_pending_is_not_searched_until_activated_and_expires(gallery):
    e = unit(np.random.default_rng(2), 1)
    c = gallery.enroll("", e, status="pending", pending_ttl_s=60)
    assert c.short_code and len(c.short_code) == 4 and c.consent is None
    assert gallery.match(e[0], 0.5, 0.0)[0].customer_id is None
    gallery.activate(c.id, "Mina Park", Consent(recorded_by="staff:1", recorded_at=datetime.now(timezone.utc),
                                                text_version="1"))
    m = gallery.match(e[0], 0.5, 0.0)[0]
    assert m.customer_id == c.id and m.accepted
    assert gallery.customer(c.id).first_name == "Mina"
    p = gallery.enroll("", unit(np.random.default_rng(3), 1), status="pending", pending_ttl_s=60)
    assert gallery.expire_pending(datetime.now(timezone.utc) + timedelta(seconds=61)) == [p.id]
    with pytest.raises(UnknownCustomer):
        gallery.customer(p.id)


def test_delete_erases_templates_and_persists(tmp_path):
    path = tmp_path / "g.sqlite"
    with Gallery(path, "sha-a") as g:
        e = unit(np.random.default_rng(4), 3)
        keep = g.enroll("Ana", e[:2])
        gone = g.enroll("Bo", e[2:])
        g.delete(gone.id)
        with pytest.raises(UnknownCustomer):
            g.delete(gone.id)
    with Gallery(path, "sha-a") as g:  # a restart
        assert [c.id for c in g.customers()] == [keep.id]
        assert g.db.execute("select count(*) from templates").fetchone()[0] == 2
        assert g.match(e[2], 0.9, 0.0)[0].customer_id == keep.id and not g.match(e[2], 0.9, 0.0)[0].accepted


def test_other_model_templates_are_never_mixed(tmp_path):
    path = tmp_path / "g.sqlite"
    e = unit(np.random.default_rng(5), 1)
    with Gallery(path, "sha-a") as g:
        g.enroll("Ana", e)
    with Gallery(path, "sha-b") as g:
        assert g.stale_templates == 1
        assert g.match(e[0], 0.0, 0.0)[0].customer_id is None


@pytest.mark.parametrize("d", [512, 128])  # FaceNet (coarse 128 dims), SFace (coarse 32 dims)
def test_coarse_index_agrees_with_exact_search(d):
    rng = np.random.default_rng(6)
    n = 30_000
    centres = unit(rng, n // 3, d)
    m = np.repeat(centres, 3, axis=0) + 0.08 * rng.standard_normal((n, d)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    owners = [f"c{i // 3}" for i in range(n)]
    coarse = Gallery(":memory:", "x")
    coarse.load_matrix(m, owners)
    assert coarse.matcher._index.coarse is not None
    exact = Gallery(":memory:", "x")
    exact.matcher.COARSE_MIN = 10**9
    exact.load_matrix(m, owners)
    q = m[rng.integers(0, n, 50)] + 0.08 * rng.standard_normal((50, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for a, b in zip(coarse.match(q, 0.5, 0.05), exact.match(q, 0.5, 0.05)):
        assert a.customer_id == b.customer_id
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.accepted == b.accepted


def box(x):
    return (x, 100.0, x + 80.0, 180.0)


def test_tracker_one_arrival_per_visit_with_cooldown():
    t = Tracker(TrackerConfig(min_votes=3, vote_share=0.6, cooldown_s=60, max_gap_s=1.0))
    out = []
    for i in range(10):
        out += t.update(i * 0.1, [Observation(box(100 + i), "ana", 0.8)])
    assert [(d.kind, d.customer_id, d.arrival) for d in out] == [("known", "ana", True)]
    assert out[0].votes == 3 and out[0].ts == pytest.approx(0.2)
    # she leaves (track ends) and is seen again 10 s later: same visit (cool-down) -> no arrival
    out = []
    for i in range(5):
        out += t.update(10 + i * 0.1, [Observation(box(300), "ana", 0.8)])
    assert [(d.arrival, d.reason) for d in out] == [(False, "cooldown")]
    # after the cool-down a new arrival
    out = []
    for i in range(5):
        out += t.update(100 + i * 0.1, [Observation(box(300), "ana", 0.8)])
    assert [d.arrival for d in out] == [True]


def test_tracker_unknown_and_two_people():
    t = Tracker(TrackerConfig(min_votes=3, unknown_after=4))
    out = []
    for i in range(6):
        out += t.update(i * 0.1, [Observation(box(10), None), Observation(box(400), "bo", 0.7),
                                  Observation(box(700), None, embedded=False)])
    kinds = sorted((d.kind, d.customer_id) for d in out)
    assert kinds == [("known", "bo"), ("unknown", None)]  # the un-embedded face never decides
    assert len({d.track_id for d in out}) == 2


def test_tracker_needs_a_majority():
    t = Tracker(TrackerConfig(min_votes=3, vote_share=0.7, unknown_after=100))
    out = []
    for i in range(8):  # alternating identities: at most 60 % share each, never decided
        out += t.update(i * 0.1, [Observation(box(10), "ana" if i % 2 else "bo", 0.6)])
    assert out == []


def test_failure_while_writing_templates_leaves_no_customer(gallery, monkeypatch):
    import sqlite_utils

    real = sqlite_utils.db.Table.insert_all

    def failing(self, rows, *a, **k):
        if self.name == "templates":
            raise OSError("disk full")
        return real(self, rows, *a, **k)

    monkeypatch.setattr(sqlite_utils.db.Table, "insert_all", failing)
    with pytest.raises(OSError):
        gallery.enroll("Ana", unit(np.random.default_rng(7), 2))
    assert gallery.db.execute("select count(*) from customers").fetchone()[0] == 0


def test_enroll_with_a_given_id_refuses_duplicates(gallery):
    import uuid

    cid = str(uuid.uuid4())
    e = unit(np.random.default_rng(8), 1)
    assert gallery.enroll("Ana", e, customer_id=cid).id == cid
    with pytest.raises(ValueError, match="already enrolled"):
        gallery.enroll("Ana", e, customer_id=cid)
    assert gallery.db.execute("select count(*) from templates").fetchone()[0] == 1


def test_tracker_follows_a_face_across_dropped_frames():
    # a face moving 70 % of its width between processed frames (IoU < 0.2) is still one track
    t = Tracker(TrackerConfig(min_votes=3))
    out = []
    for i in range(4):
        out += t.update(i * 0.2, [Observation(box(100 + 56 * i), "ana", 0.8)])
    assert [(d.kind, d.customer_id) for d in out] == [("known", "ana")]
    assert len(t.tracks) == 1
    # a face far away (more than a face width) is someone else
    t.update(1.0, [Observation(box(600), None)])
    assert len(t.tracks) == 2


def test_pending_short_codes_are_unique(gallery, monkeypatch):
    """The kiosk's code is how staff find the person in front of them among the pending sign-ups: two pending
    customers must never share one (else staff may give one person's name and consent to another's face)."""
    import dangol_edge.gallery as gallery_module

    monkeypatch.setattr(gallery_module.secrets, "randbelow", lambda n: min(1234, n - 1))  # the same draw every time
    rng = np.random.default_rng(4)
    a = gallery.enroll("", unit(rng, 1), status="pending", pending_ttl_s=60)
    b = gallery.enroll("", unit(rng, 1), status="pending", pending_ttl_s=60)
    assert a.short_code == "1234" and b.short_code not in (None, a.short_code)
    gallery.activate(a.id, "Mina Park", Consent(recorded_by="staff:1", recorded_at=datetime.now(timezone.utc),
                                                text_version="1"))
    c = gallery.enroll("", unit(rng, 1), status="pending", pending_ttl_s=60)
    assert c.short_code == "1234"  # free again once its sign-up was activated


def test_a_search_during_a_reload_sees_one_whole_gallery():
    """The web thread reloads the matrix after an erasure while the recognition thread searches: a search must
    use one gallery throughout, never one gallery's rows with another's owners (a wrong name at the door)."""
    import threading

    from dangol_edge.matcher import Matcher

    rng = np.random.default_rng(5)
    big, small = unit(rng, 3000, 128), unit(rng, 3, 128)
    big_owners, small_owners = [f"a{i}" for i in range(3000)], ["b0", "b1", "b2"]
    matcher, stop, errors = Matcher(), threading.Event(), []
    matcher.load(big, big_owners)

    def reload():
        while not stop.is_set():
            matcher.load(small, small_owners)
            matcher.load(big, big_owners)

    t = threading.Thread(target=reload)
    t.start()
    try:
        for _ in range(3000):
            try:
                m = matcher.match(big[2999], threshold=0.5, margin=0.0)[0]
            except Exception as exc:  # noqa: BLE001 - any error is the defect
                errors.append(repr(exc))
                continue
            if m.customer_id.startswith("a") and (m.customer_id, round(m.score, 4)) != ("a2999", 1.0):
                errors.append(f"{m.customer_id} {m.score:.3f}")
            if m.customer_id.startswith("b") and m.accepted:
                errors.append(f"{m.customer_id} accepted at {m.score:.3f}")
    finally:
        stop.set()
        t.join()
    assert errors == []


def test_an_erasure_during_a_reload_is_not_undone(gallery, monkeypatch):
    """The recognition thread reads the templates to rebuild its matrix; the staff page erases a customer before
    that matrix is installed. The erased face must not stay searchable until some later change."""
    rng = np.random.default_rng(6)
    a, b = unit(rng, 2)
    ana, gallery_bo = gallery.enroll("Ana", a[None]), gallery.enroll("Bo", b[None])
    read = gallery.matrix_for

    def read_then_erase(sha):
        out = read(sha)
        if gallery.customers() and any(c.id == ana.id for c in gallery.customers()):
            gallery.delete(ana.id)  # the web thread, between the read and the install
        return out

    monkeypatch.setattr(gallery, "matrix_for", read_then_erase)
    m = gallery.match(a, threshold=0.5, margin=0.0)[0]
    assert m.customer_id != ana.id and not (m.accepted and m.customer_id == ana.id)
    assert gallery.match(b, threshold=0.5, margin=0.0)[0].customer_id == gallery_bo.id


def test_forgetting_a_customer_while_a_frame_is_decided_never_fails_it():
    """Erasures arrive on the web and MQTT threads while the recognition thread updates the tracks: here the
    erasure lands between the vote count and the decision of the same frame (the interleaving made exact)."""
    from collections import Counter

    t = Tracker(TrackerConfig(min_votes=3, vote_share=0.5, cooldown_s=60, max_gap_s=1.0))
    for i in range(2):
        t.update(i * 0.1, [Observation(box(100), "ana", 0.8)])

    class ErasedMidway(Counter):
        def items(self):
            for kv in list(super().items()):
                yield kv
                t.forget("ana")  # the staff page erases Ana while this frame is being decided

    t.tracks[0].votes = ErasedMidway(t.tracks[0].votes)
    t.update(0.2, [Observation(box(100), "ana", 0.8)])  # must not raise
    t.update(0.3, [Observation(box(100), None, 0.1)])  # the next frame: Ana is forgotten
    assert "ana" not in t.tracks[0].votes and "ana" not in t.tracks[0].best
