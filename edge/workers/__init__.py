"""The daemon's workers, one job each, wired by :class:`dangol_edge.daemon.Appliance` with one stop event:

=================  ===========================================  ==========================================
worker             job                                          talks to
=================  ===========================================  ==========================================
capture            camera/file → bounded frame queue            ``frames`` (drops the oldest when behind)
recognition        frames → detect, embed, match, track         ``decisions``; enrolment owns the frames
                                                                while a sign-up is captured
enrolment          the GPIO button's sign-up (one capture       runs on the recognition thread (it shares
                   rule: :class:`~dangol_edge.enrol.SampleCollector`)  the face pipeline, which is single-threaded)
arrivals           decisions → welcome screen, gallery touch,   screen, gallery, outbox
                   arrival / unknown-face events
housekeeping       watchdog, status, retention, expired         sync, gallery, state, outbox
                   sign-ups, held events, outbox pruning
=================  ===========================================  ==========================================
"""

from .arrivals import ArrivalWorker
from .base import Stats, Worker
from .capture import CaptureWorker
from .enrolment import ButtonEnrolment
from .housekeeping import HousekeepingWorker
from .recognition import RecognitionWorker

__all__ = ["ArrivalWorker", "ButtonEnrolment", "CaptureWorker", "HousekeepingWorker", "RecognitionWorker",
           "Stats", "Worker"]
