"""Decompression of zip members in bounded memory with cheap random access: bounded decoders
(:mod:`.decoders`), checkpoints of deflate streams (:mod:`.checkpoints`), per-handle streams
with a window of recent output (:mod:`.streams`) and the streams of closed handles
(:mod:`.park`) under one memory budget (:mod:`.budget`), decoded cells in the block cache for
random reads (:mod:`.cells`), all shared through one :class:`Decoding` per engine."""

from .budget import DECODER_MEMORY, DecoderBudget, DecoderMemoryBusy
from .checkpoints import Checkpoint, CheckpointStore
from .decoders import Decoder, crc32, make_decoder
from .decoding import Decoding
from .park import StreamPark
from .streams import MemberStream, Stream, member_chunks

__all__ = ["DECODER_MEMORY", "Checkpoint", "CheckpointStore", "DecoderBudget", "DecoderMemoryBusy",
           "Decoder", "Decoding", "MemberStream", "Stream", "StreamPark", "crc32", "make_decoder",
           "member_chunks"]
