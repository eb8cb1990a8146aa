"""The ``.lcz`` file format and nothing else: the frame, the header's checks, the writer, the reader, the codecs.

Models are saved and loaded by :mod:`lightning_compress.saving`, above this package; nothing here imports a model,
a callback or model surgery.
"""

from lightning_compress.codec.base import Codec, CodecSpec, EncodedTensor, available_codecs, get_codec, register_codec
from lightning_compress.codec.codebook import CodebookCodec
from lightning_compress.codec.dense import DenseCodec
from lightning_compress.codec.frame import FORMAT_VERSION
from lightning_compress.codec.reader import read_artifact
from lightning_compress.codec.records import Artifact, ArtifactError, TensorRecord
from lightning_compress.codec.sparse import SparseCodec
from lightning_compress.codec.sparse_codebook import SparseCodebookCodec
from lightning_compress.codec.surp_codec import SurpCodec
from lightning_compress.codec.ternary import TernaryCodec

__all__ = [
    "FORMAT_VERSION",
    "Artifact",
    "ArtifactError",
    "CodebookCodec",
    "Codec",
    "CodecSpec",
    "DenseCodec",
    "EncodedTensor",
    "SparseCodebookCodec",
    "SparseCodec",
    "SurpCodec",
    "TensorRecord",
    "TernaryCodec",
    "available_codecs",
    "get_codec",
    "read_artifact",
    "register_codec",
]
