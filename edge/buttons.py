"""The staff enrolment button and its LED, through gpiozero.

Hardware sits behind gpiozero's pin factories: on a Pi the default (lgpio) factory drives BCM pins;
tests pass ``gpiozero.pins.mock.MockFactory()``. Callbacks only queue work (they run on gpiozero's
thread and must return at once); the daemon's recognition thread does the capturing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .config import GPIOConfig

log = logging.getLogger(__name__)


class EnrolButton:
    """A momentary push button (to ground, internal pull-up) and an LED.

    A press calls ``on_press``; holding it ``hold_cancel_s`` seconds (once per press) calls ``on_cancel``, which
    cancels what that press started (:meth:`~dangol_edge.workers.enrolment.ButtonEnrolment.request`); the release
    calls nothing, so a hold never starts a sign-up.

    Args:
        config: pins (BCM numbering) and hold time.
        pin_factory: a gpiozero pin factory; None uses gpiozero's default.
    """

    def __init__(self, config: GPIOConfig, on_press: Callable[[], None], on_cancel: Callable[[], None],
                 pin_factory=None):
        self.config = config
        self.on_press = on_press
        self.on_cancel = on_cancel
        self.pin_factory = pin_factory
        self.button = None
        self.led = None

    def open(self) -> "EnrolButton":
        """Claim the pins. On failure nothing stays claimed (a button made before its LED failed is closed again).

        Raises:
            gpiozero.GPIOZeroError: gpiozero's errors, e.g. ``BadPinFactory`` off a Pi, ``GPIOPinInUse`` when
                another device or process holds a pin.
        """
        from gpiozero import LED, Button

        try:
            self.button = Button(self.config.button_pin, pull_up=True, bounce_time=0.05,
                                 hold_time=self.config.hold_cancel_s, pin_factory=self.pin_factory)
            self.led = LED(self.config.led_pin, pin_factory=self.pin_factory)
        except Exception:
            self.close()
            raise
        self.button.when_pressed = lambda: self.on_press()
        self.button.when_held = lambda: self.on_cancel()
        return self

    def busy(self) -> None:
        """Blink the LED (enrolment in progress)."""
        if self.led is not None:
            self.led.blink(on_time=0.2, off_time=0.2)

    def done(self) -> None:
        """LED off."""
        if self.led is not None:
            self.led.off()

    def close(self) -> None:
        """Release the pins."""
        for dev in (self.button, self.led):
            if dev is not None:
                dev.close()
        self.button = self.led = None
