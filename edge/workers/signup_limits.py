"""When a sign-up at the door cannot work, so it ends or never starts (used by
:class:`~dangol_edge.workers.enrolment.ButtonEnrolment` on the recognition thread): a capture that outlives its deadline
(no frames coming) ends as ``failed``, and none starts while the camera is known not to work."""

from __future__ import annotations

SIGNUP_MIN_FPS = 5.0
"""Slowest frame rate a sign-up is given: its capture ends as ``failed`` (``why="none"``) once ``enrol.max_frames``
frames at this rate have passed on the wall clock (:func:`capture_deadline_s`), also when no frame comes at all (a
camera that stopped delivering: the recognition loop applies requests, and checks this, every 0.2 s without frames).
For the default 300 frames that is 60 s, as long as the door shows a new code
(:data:`~dangol_edge.workers.enrolment.CODE_SHOWN_S`) and about as long as a customer waits at the door; the 29 frames a
sign-up needs (:func:`~dangol_edge.config.signup_frames_needed`) fit in it down to 0.5 frames a second, far below what
a camera and a Pi deliver (15-120 and several a second: :data:`~dangol_edge.workers.recognition.FPS_IDLE_S`)."""


def capture_deadline_s(max_frames: int) -> float:
    """Seconds a sign-up's capture may run: ``enrol.max_frames`` frames at :data:`SIGNUP_MIN_FPS`."""
    return max_frames / SIGNUP_MIN_FPS


def camera_problem(stats) -> str | None:
    """Why the camera is known not to work, from the capture worker's ``stats``
    (:class:`~dangol_edge.workers.base.Stats`, or None: not known), else None: it delivers, or has not been heard from
    yet (right after the start, before its first frame or error). Known not to work: the capture thread died, the
    camera failed (``error``), or it is ``missing`` after an error or after it delivered (a source that ended, a camera
    unplugged)."""
    if stats is None:
        return None
    if "capture" in stats.crashed:
        return "the capture thread died"
    if stats.camera == "error" or (stats.camera == "missing" and (stats.camera_errors or stats.frames_captured)):
        return f"camera {stats.camera}"
    return None
