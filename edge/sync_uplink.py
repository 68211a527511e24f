"""The up-link half of :class:`~dangol_edge.sync.MQTTSync`: publishing at QoS 1, matching each PUBACK to its event,
and the outbox flusher.

* **Message ids**: paho numbers each QoS 1 publish (16 bits: ids come round again after 65,535 publishes).
  :meth:`Uplink._publish` records which event (None: a status message) each id is, in ``_inflight``, both when
  ``publish()`` sent it and when it reported *not connected* — paho keeps such a message and sends it itself after
  reconnecting, so its PUBACK settles that very event and the flusher does not send it a second time meanwhile.
* **Early PUBACKs**: a PUBACK may be handled before ``publish()`` has returned its id to the publisher. Its outcome
  (failed?) is then parked in ``_early`` by id and settled by the publisher right after ``publish()`` returns, so a
  refusal is never mistaken for a success. ``_early`` is cleared on every (re)connection (an entry left there can
  belong to no publish still under way: paho reconnects after ≥ 1 s) and holds at most :data:`EARLY_MAX` entries
  (beyond, the oldest go, logged), so a leftover entry never settles a later event that gets the same id. A
  publisher whose PUBACK was handled and cleared meanwhile (``MQTTMessageInfo.is_published()`` but no outcome) leaves
  its event unacknowledged: the flusher sends it again (at-least-once; the cloud deduplicates on ``event_id``).
* **Refused events** (a PUBACK with a refusal code, e.g. the broker's ACL): the event stays in the outbox and is
  tried again after a back-off of its own (``reconnect_min_s`` doubling with each refusal of that event, up to
  :data:`REFUSED_RETRY_MAX_S`), and at once after every (re)connection (the ACL may have been fixed). While it waits,
  the flusher's query leaves it out, so refused events never block newer ones. At most :data:`REFUSED_MAX` are
  remembered: when the map is full, the ones in it keep their back-offs and a further refusal (the *overflow*) is not
  remembered by id; instead the flusher sends no event outside the map until one shared back-off ends (doubling with
  each overflow, up to :data:`REFUSED_RETRY_MAX_S`; cleared by a (re)connection and once the map has room again), so
  the overflow is re-sent once per back-off, never on every pass. A streak of overflows is logged once.
  :attr:`Uplink.refused_held` (the device's health, ``refused_events``) counts the refused events remembered: capped at
  :data:`REFUSED_MAX`, when it reads that value more may be held back (:attr:`Uplink.refused_overflow`).
* **Undelivered events** (PUBACK 0x10 *No matching subscribers*, :func:`dangol_protocol.client.reached_nobody`): the
  broker took the event but no subscription matched, so nobody got it — the cloud listener's persistent session is
  not on the broker (lost in a broker crash before its autosave, persistence wiped, or expired after
  ``persistent_client_expiration``) and the listener has not subscribed again yet. Such an event is not marked sent:
  it is held exactly like a refused one (same map, back-off and bound), but counted apart, in
  :attr:`Uplink.unheard_events` and :attr:`Uplink.unheard_held`, not as a refusal. A streak of them is logged once (a
  warning) and once when it ends: the first event delivered again makes every held undelivered event due at once. A
  status (retained: the broker keeps it for later subscribers) with 0x10 is a success.
* **Storage faults** and the flusher's back-off: see :mod:`dangol_edge.sync`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict

import paho.mqtt.client as mqtt
from dangol_protocol import client as mqtt5

from .workers.base import storage_state

log = logging.getLogger("dangol_edge.sync")

#: PUBACK outcomes parked for a publisher at most (in practice one or two at a time); beyond, the oldest go.
EARLY_MAX = 1000
#: Longest wait, seconds, before a refused event is tried again (its back-off doubles from ``reconnect_min_s``).
REFUSED_RETRY_MAX_S = 600.0
#: Refused events remembered at most (with their back-off); beyond, the overflow shares one back-off (module docstring).
REFUSED_MAX = 10_000
#: Events the flusher reads from the outbox per pass (refused ones waiting for their retry are not among them).
FLUSH_BATCH = 200

#: ``publish()`` results after which paho holds the message and a PUBACK will come: sent, or kept to be sent after
#: reconnecting.
_KEPT = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)


def _outcome(reason_code) -> tuple[str, str]:
    """A PUBACK's reason code → (``"ok"`` | ``"unheard"`` (0x10, delivered to no subscriber) | ``"refused"`` (≥ 0x80,
    e.g. the ACL), the code as text)."""
    kind = "refused" if mqtt5.is_refusal(reason_code) else "unheard" if mqtt5.reached_nobody(reason_code) else "ok"
    return kind, str(reason_code)


def _acknowledged(info) -> bool:
    """Whether paho has handled the message's PUBACK (``is_published()`` raises for a message it kept while not
    connected: its flag is read then)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return bool(getattr(info, "_published", False))


class Uplink:
    """PUBACK bookkeeping and the outbox flusher (a mixin of :class:`~dangol_edge.sync.MQTTSync`: it uses its
    ``state``, ``stats``, ``config``, ``connected``, ``_client``, ``_lock``, ``_wake`` and ``_stop``).

    Attributes:
        storage_errors: broker acknowledgements that could not be recorded (the event is sent again).
        flush_errors: passes of the outbox flusher that failed (retried after a back-off).
        rejected_events: refusals by the broker, counted each time (the event is kept in the outbox and tried again
            after a back-off, see the module docstring).
        unheard_events: events the broker delivered to no subscriber (PUBACK 0x10), counted each time (kept and
            tried again like refused ones).
    """

    def _init_uplink(self) -> None:
        """Attributes only: called by the sync's constructor."""
        self.storage_errors = 0
        self.flush_errors = 0
        self.rejected_events = 0
        self.unheard_events = 0
        self._unheard_streak = 0  # undelivered acknowledgements since the last delivered event (0: none)
        self._settle_failing = False  # a streak of acknowledgements that could not be recorded
        #: message id → event id (None: a status message) of publishes awaiting their PUBACK
        self._inflight: dict[int, str | None] = {}
        #: PUBACK outcomes (message id → (outcome, reason), :func:`_outcome`) that arrived before the publisher
        #: recorded the id (bounded, cleared on every connection)
        self._early: OrderedDict[int, tuple[str, str]] = OrderedDict()
        #: event id → [monotonic time of its next try, refusals so far, delivered to nobody (0x10)?] of events the
        #: broker refused or delivered to no subscriber (bounded)
        self._rejected: OrderedDict[str, list] = OrderedDict()
        #: the overflow's shared back-off: [monotonic time until which no event outside ``_rejected`` is sent,
        #: overflows in this streak (0: none)]
        self._overflow = [0.0, 0]

    @property
    def refused_held(self) -> int:
        """Events the broker refused that are still held in the outbox for a retry, each with its own back-off (the
        health's ``refused_events``). Capped at :data:`REFUSED_MAX`: at that value, further refused events may be held
        back beyond it under the overflow's shared back-off (:attr:`refused_overflow`), uncounted. Events delivered to
        no subscriber are not among them (:attr:`unheard_held`)."""
        with self._lock:
            return sum(1 for entry in self._rejected.values() if not entry[2])

    @property
    def unheard_held(self) -> int:
        """Events the broker delivered to no subscriber (PUBACK 0x10: the cloud's listener session is missing) that
        are held in the outbox for a retry; they share :data:`REFUSED_MAX` with the refused ones."""
        with self._lock:
            return sum(1 for entry in self._rejected.values() if entry[2])

    @property
    def refused_overflow(self) -> bool:
        """Whether more events were refused than :data:`REFUSED_MAX` (the map is full and the rest wait for the
        overflow's shared back-off)."""
        with self._lock:
            return self._overflow[1] > 0

    def _retry_refused_now(self) -> None:
        """A (re)connection: every refused event is due at once (the broker's ACL may have been fixed meanwhile)."""
        with self._lock:
            for entry in self._rejected.values():
                entry[0] = 0.0
            self._overflow[0] = 0.0

    def _clear_early(self) -> None:
        """A (re)connection: outcomes parked earlier belong to no publish still under way (see the module docstring)."""
        with self._lock:
            stale = len(self._early)
            self._early.clear()
        if stale:
            log.debug("dropped %d acknowledgement(s) no publisher claimed", stale)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if mid not in self._inflight:  # PUBACK before publish() returned: the publisher settles it
                self._early[mid] = _outcome(reason_code)
                self._early.move_to_end(mid)
                while len(self._early) > EARLY_MAX:
                    old, _ = self._early.popitem(last=False)
                    log.warning("dropped the acknowledgement of message %d: no publisher claimed it", old)
                return
            event_id = self._inflight.pop(mid)
        self._settle(event_id, *_outcome(reason_code))

    def _settle(self, event_id: str | None, outcome: str, reason: str) -> None:
        """Apply a PUBACK (``outcome`` of :func:`_outcome`): a success marks the event sent, a refusal or a delivery
        to nobody keeps it (tried again after its back-off, :meth:`_refused`). Never
        raises: when the acknowledgement cannot be written (disk full, read-only medium) the event stays
        unacknowledged and is sent again, the failure is counted in :attr:`storage_errors` and reported in
        ``stats.storage``, and a streak of them is logged once (paho's network thread must not see an exception:
        it would die of it and the connection with it)."""
        if event_id is None:
            if outcome == "refused":
                log.error("the broker refused this device's status message (%s)", reason)
            return
        if outcome != "ok":
            self._refused(event_id, reason, unheard=outcome == "unheard")
            return
        with self._lock:
            self._rejected.pop(event_id, None)
            streak, self._unheard_streak = self._unheard_streak, 0
            if streak:  # delivered again: the listener is back, the events held for it are due now
                for entry in self._rejected.values():
                    if entry[2]:
                        entry[0] = 0.0
        if streak:
            log.info("the cloud's listener subscribed again: an event was delivered after %d acknowledgement(s) "
                     "that reached no subscriber; the events held for it are sent now", streak)
            self._wake.set()
        try:
            self.state.mark_sent(event_id)
        except sqlite3.Error as exc:
            self.storage_errors += 1
            self.stats.storage = storage_state(exc)
            if not self._settle_failing:
                self._settle_failing = True
                log.error("cannot record the broker's acknowledgement of event %s (%s): it stays in the outbox and "
                          "is sent again", event_id, exc, exc_info=True)
            return
        if self._settle_failing:
            self._settle_failing = False
            self.stats.storage = "ok"
            log.info("acknowledgements are recorded again (%d could not be, in all)", self.storage_errors)

    def _refused(self, event_id: str, reason: str, unheard: bool = False) -> None:
        """Hold a refused event (``unheard``: one delivered to no subscriber) for a retry after its back-off; the first
        refusal of each event is logged as an error, later ones when their count doubles; a streak of undelivered
        ones is logged once, as a warning."""
        now = time.monotonic()
        with self._lock:
            if unheard:
                self._unheard_streak += 1
                first_unheard = self._unheard_streak == 1
            entry = self._rejected.pop(event_id, None)
            tries = entry[1] + 1 if entry else 1
            if entry is None and len(self._rejected) >= REFUSED_MAX:  # full: the ones there keep their back-offs
                first = self._overflow[1] == 0
                if self._overflow[0] <= now:  # a new overflow back-off (one per window, not per event)
                    self._overflow[1] += 1
                    self._overflow[0] = now + self._back_off(self._overflow[1])
                wait = self._overflow[0] - now
            else:
                wait = self._back_off(tries)
                self._rejected[event_id] = [now + wait, tries, unheard]
                first = None
        if unheard:
            self.unheard_events += 1
            if first_unheard:
                log.warning("the broker delivered event %s to no subscriber (%s): the cloud's listener session is not "
                            "on the broker (lost in a broker crash, persistence wiped, or expired); events are kept in "
                            "the outbox and tried again with back-off until the listener subscribes again (logged "
                            "once until then)", event_id, reason)
        else:
            self.rejected_events += 1
        if first is not None:
            if first:
                log.warning("more than %d refused events: the map of their back-offs is full; the events beyond it "
                            "(e.g. %s, %s) are held back together and tried again in %.0f s, doubling; check this "
                            "device's id and the broker's ACL", REFUSED_MAX, event_id, reason, wait)
            return
        if unheard:
            return
        if tries == 1:
            log.error("the broker refused event %s (%s): kept in the outbox and tried again in %.0f s; check this "
                      "device's id and the broker's ACL", event_id, reason, wait)
        elif tries & (tries - 1) == 0:
            log.warning("the broker refused event %s again (%s; %d times): tried again in %.0f s", event_id, reason,
                        tries, wait)

    def _back_off(self, tries: int) -> float:
        """Seconds before the ``tries``-th retry of a refused event: ``reconnect_min_s`` doubling, capped."""
        return min(self.config.reconnect_min_s * 2.0 ** min(tries - 1, 30), REFUSED_RETRY_MAX_S)

    def _holding_back(self) -> bool:
        """Whether the overflow's back-off holds events outside the refused map back now (the lock is not held)."""
        with self._lock:
            return self._overflow[0] > time.monotonic()

    def _publish(self, topic: str, payload: bytes, event_id: str | None, retain: bool = False):
        """Publish at QoS 1 and record which event (None: status) the message id is — also when paho reports *not
        connected* (it keeps the message and sends it after reconnecting); a PUBACK that came first is settled here.
        Returns paho's ``MQTTMessageInfo`` (``rc`` ``MQTT_ERR_NO_CONN``: kept by paho; another error: not sent, not
        recorded), or None without a client."""
        c = self._client
        if c is None:
            return None
        info = c.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in _KEPT:
            return info
        with self._lock:
            early = self._early.pop(info.mid, None)
            lost = early is None and _acknowledged(info)  # its outcome was cleared by a reconnection meanwhile
            if early is None and not lost:
                self._inflight[info.mid] = event_id
        if early is not None:
            self._settle(event_id, *early)
        elif lost:
            log.info("the acknowledgement of message %d came during a reconnection; %s is sent again", info.mid,
                     "its event" if event_id else "a status")
        return info

    def _flush_loop(self) -> None:
        """The outbox flusher's thread: a pass on every wake-up (at least every second). A pass that fails, or
        whose acknowledgements could not be recorded, is counted and the next one waits a back-off
        (``reconnect_min_s`` doubling up to ``reconnect_max_s``, so a full disk is not flooded with re-sends); a
        streak of failed passes is logged once with its traceback and once when it ends. Never raises."""
        delay, streak, logged, flagged = 0.0, 0, False, False
        recorded = self.storage_errors
        while not self._stop.is_set():
            if delay:
                if self._stop.wait(delay):
                    return
            else:
                self._wake.wait(1.0)
            self._wake.clear()
            failed = self.storage_errors != recorded  # acknowledgements of the last pass could not be recorded
            recorded = self.storage_errors
            if not failed:
                try:
                    self._flush_once()
                except Exception as exc:  # the flusher must outlive any one pass (the outbox cannot be read …)
                    failed = True
                    self.flush_errors += 1
                    if isinstance(exc, sqlite3.Error):
                        self.stats.storage, flagged = storage_state(exc), True
                    if not logged:
                        log.exception("the outbox flusher failed; retrying with back-off")
                        logged = True
            if failed:
                streak += 1
                delay = min(max(self.config.reconnect_min_s, 2 * delay), self.config.reconnect_max_s)
            elif streak and not self._settle_failing:  # (while it is, the acknowledgements of this pass decide)
                log.info("the outbox flusher works again after %d failed passes", streak)
                if flagged:
                    self.stats.storage = "ok"
                delay, streak, logged, flagged = 0.0, 0, False, False

    def _flush_once(self) -> None:
        """One pass of the flusher: publish the unacknowledged events, oldest first, while connected (an event whose
        message paho still holds is skipped: paho sends it; so is a refused one until its retry is due). A refused
        event that is due but no longer in the outbox (erased, or sent meanwhile) is forgotten.

        Raises:
            sqlite3.Error: the outbox cannot be read.
        """
        if self._stop.is_set() or not self.connected.is_set() or self._client is None:
            return
        now = time.monotonic()
        with self._lock:
            skip = set(self._inflight.values())
            due = {eid for eid, (at, *_) in self._rejected.items() if at <= now} - skip
            skip |= self._rejected.keys() - due
            ended = self._overflow[1] if self._overflow[1] and len(self._rejected) < REFUSED_MAX else 0
            if ended:  # room again: the overflow streak ends
                self._overflow = [0.0, 0]
        if ended:
            log.info("the refused events fit their map again (after %d shared back-offs)", ended)
        batch = self.state.pending(limit=FLUSH_BATCH, exclude=skip)
        if len(batch) < FLUSH_BATCH:  # the whole outbox was read: a due refused event not in it is gone
            gone = due - {ev["event_id"] for ev in batch}
            if gone:
                with self._lock:
                    for eid in gone:
                        self._rejected.pop(eid, None)
        for ev in batch:
            if not self.connected.is_set():
                continue
            if ev["event_id"] not in due and self._holding_back():
                continue  # the overflow's back-off: only refused events in the map, when due
            if ev["customer_id"] and not self.state.sendable(ev["event_id"], ev["customer_id"]):
                continue  # the customer's erasure began since the event was read
            info = self._publish(ev["topic"], ev["payload"].encode("utf-8"), ev["event_id"])
            if info is None or info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # not connected any more (paho keeps that one): the rest after the next connect

