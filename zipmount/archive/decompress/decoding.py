"""What the compressed-member readers of one engine share."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checkpoints import CheckpointStore
from .park import StreamPark


@dataclass
class Decoding:
    """Built once by the engine and handed to every archive it opens: the checkpoint store (its
    budget covers every archive served) and the parked streams of closed handles."""

    checkpoints: CheckpointStore = field(default_factory=CheckpointStore)
    park: StreamPark = field(default_factory=StreamPark)
