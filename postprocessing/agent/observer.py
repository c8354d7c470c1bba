"""Hooks the loop calls when things happen, for metrics; the default does nothing."""

from typing import Mapping, Optional


class Observer:
    """Subclass and pass to :class:`~postprocessing.agent.agent.Agent` to watch it work."""

    def job_started(self, kind: str) -> None:
        """A job of processor ``kind`` started."""

    def job_finished(self, kind: str, destination: str, seconds: float, kill_reason: Optional[str]) -> None:
        """A job ended with an outcome sent to ``destination``; ``kill_reason`` if a limit killed it."""

    def rejected(self, destination: str) -> None:
        """A message failed validation before any job ran."""

    def reconnected(self) -> None:
        """The agent (re)connected to a broker."""

    def heartbeat_sent(self) -> None:
        """A heartbeat went out."""

    def send_refused(self, destination: str, reason: str) -> None:
        """The broker refused a message to ``destination``; it will be sent again."""

    def duplicate_delivery(self, how: str) -> None:
        """A message came again for a run already known: ``rejoined`` a running job, ``confirmed``
        (its outcome was already confirmed) or ``lost_ack`` (acked just before the broker went away)."""

    def control_state(self, draining: bool, paused: Mapping[str, float]) -> None:
        """The agent's drain and pause state changed (and once at start): ``paused`` maps each paused
        instrument to the Unix time its pause began."""
