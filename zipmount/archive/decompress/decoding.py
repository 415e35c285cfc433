"""What the compressed-member readers of one engine share."""

from __future__ import annotations

from dataclasses import dataclass, field

from .budget import DecoderBudget
from .cells import CellFills
from .checkpoints import CheckpointStore
from .park import StreamPark


@dataclass
class Decoding:
    """Built once by the engine and handed to every archive it opens: the checkpoint store (its
    budget covers every archive served), the parked streams of closed handles and the budget
    of decoder memory (decoders, windows, parked streams)."""

    checkpoints: CheckpointStore = field(default_factory=CheckpointStore)
    park: StreamPark = field(default_factory=StreamPark)
    budget: DecoderBudget = field(default_factory=DecoderBudget)
    fills: CellFills = field(default_factory=CellFills)

    def close(self) -> None:
        """Free what closed handles left behind and stop filling (the engine closes)."""
        self.fills.close()
        self.park.clear()
        self.budget.clear()
