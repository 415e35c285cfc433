"""Decompression of zip members in bounded memory with cheap random access: bounded decoders
(:mod:`.decoders`), checkpoints of deflate streams (:mod:`.checkpoints`) and per-handle streams
with a window of recent output (:mod:`.streams`)."""

from .checkpoints import CHECKPOINTS, Checkpoint, CheckpointStore
from .decoders import Decoder, crc32, make_decoder
from .streams import PARKED, MemberStream, Stream, StreamPark, member_chunks

__all__ = ["CHECKPOINTS", "PARKED", "Checkpoint", "CheckpointStore", "Decoder", "MemberStream",
           "Stream", "StreamPark", "crc32", "make_decoder", "member_chunks"]
