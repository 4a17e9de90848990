"""The agent's one error hierarchy. Third-party errors (paho, OS, ssl) are translated into
these at the module that touches them."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class LinkError(AgentError):
    """The MQTT link cannot be set up (TLS material missing or unreadable, bad settings)."""


class PayloadError(AgentError):
    """A message the agent built does not fit the wire contract."""


class CameraError(AgentError):
    """A camera source cannot open or deliver a frame."""


class StateDirError(AgentError):
    """The state directory cannot be created or is not writable."""


class ModelError(AgentError):
    """A model or its model card cannot be fetched, loaded or does not match its card."""


class DetectorError(AgentError):
    """The detector backend is missing or failed to run."""


class PipelineConfigError(AgentError):
    """The detection pipeline's settings do not fit the model or the frame."""


class OutboxError(AgentError):
    """The on-disk outbox cannot be opened or written."""
