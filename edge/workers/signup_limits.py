"""When a sign-up at the door cannot work, so it ends or never starts (used by
:class:`~dangol_edge.workers.enrolment.ButtonEnrolment` on the recognition thread): a capture that outlives its deadline
(no frames coming) ends as ``failed``, and none starts while the camera is known not to work, or has delivered no frame
since a capture ran out of frames."""

from __future__ import annotations

SIGNUP_MIN_FPS = 5.0
"""Slowest frame rate a sign-up is given: its capture ends as ``failed`` once ``enrol.max_frames`` frames at this rate
have passed on the wall clock (:func:`capture_deadline_s`), also when no frame comes at all (a camera that stopped
delivering: the recognition loop applies requests, and checks this, every 0.2 s without frames): with ``why="camera"``
below :data:`SIGNUP_STALLED_FPS`, else with the collector's reason.
For the default 300 frames that is 60 s, as long as the door shows a new code
(:data:`~dangol_edge.workers.enrolment.CODE_SHOWN_S`) and about as long as a customer waits at the door; the 29 frames a
sign-up needs (:func:`~dangol_edge.config.signup_frames_needed`) fit in it down to 0.5 frames a second, far below what
a camera and a Pi deliver (15-120 and several a second: :data:`~dangol_edge.workers.recognition.FPS_IDLE_S`)."""


SIGNUP_STALLED_FPS = 1.0
"""Fewer frames a second than this over a capture that reached its deadline (under 60 in the default 60 s): the camera
failed the sign-up, not the customer's face, light or pose (``why="camera"``), and no sign-up starts until the camera
delivers a frame again (:func:`camera_problem`). A working camera delivers 15-120 a second; at this rate the 29 frames
a sign-up needs (:data:`SIGNUP_MIN_FPS`) still come in half the time, so a capture given more frames failed for its
faces."""


def deadline_failure(frames: int, max_frames: int, kind: str) -> tuple[str, str]:
    """``(why, note for the log)`` of a capture that reached its deadline (:func:`capture_deadline_s` of
    ``enrol.max_frames``) after ``frames`` frames: ``camera`` below :data:`SIGNUP_STALLED_FPS`, else ``kind``, the
    collector's reason (:meth:`~dangol_edge.enrol.SampleCollector.shortfall_kind`)."""
    seconds = capture_deadline_s(max_frames)
    note = f" (only {frames} frames in the {seconds:.0f} s a capture may run)"
    if frames < SIGNUP_STALLED_FPS * seconds:
        return "camera", note + "; the camera does not deliver: no sign-up starts until it delivers a frame"
    return kind, note


def capture_deadline_s(max_frames: int) -> float:
    """Seconds a sign-up's capture may run: ``enrol.max_frames`` frames at :data:`SIGNUP_MIN_FPS`."""
    return max_frames / SIGNUP_MIN_FPS


def camera_problem(stats, stalled_at: int | None = None) -> str | None:
    """Why the camera is known not to work, from the capture worker's ``stats``
    (:class:`~dangol_edge.workers.base.Stats`, or None: not known), else None: it delivers, or has not been heard from
    yet (right after the start, before its first frame or error). Known not to work: the capture thread died, the
    camera failed (``error``), it is ``missing`` after an error or after it delivered (a source that ended, a camera
    unplugged), or ``stats.frames_captured`` is still ``stalled_at``, its count when a capture ran out of frames
    (:data:`SIGNUP_STALLED_FPS`; a read that hangs reports no error)."""
    if stats is None:
        return None
    if stalled_at is not None and stats.frames_captured == stalled_at:
        return "no frame from the camera since a sign-up's capture ran out of frames"
    if "capture" in stats.crashed:
        return "the capture thread died"
    if stats.camera == "error" or (stats.camera == "missing" and (stats.camera_errors or stats.frames_captured)):
        return f"camera {stats.camera}"
    return None
