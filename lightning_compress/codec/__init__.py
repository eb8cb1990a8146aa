"""Compressed artifact container and the codecs it stores tensors with."""

from lightning_compress.codec.base import Codec, EncodedTensor, available_codecs, get_codec, register_codec
from lightning_compress.codec.codebook import CodebookCodec
from lightning_compress.codec.container import (
    FORMAT_VERSION,
    Artifact,
    ArtifactError,
    CodecSpec,
    TensorRecord,
    load,
    read_artifact,
    save,
)
from lightning_compress.codec.dense import DenseCodec
from lightning_compress.codec.representation import CompositionError, Representation, representation_of
from lightning_compress.codec.sparse import SparseCodec
from lightning_compress.codec.sparse_codebook import SparseCodebookCodec
from lightning_compress.codec.surp import SurpCodec
from lightning_compress.codec.ternary import TernaryCodec

__all__ = [
    "FORMAT_VERSION",
    "Artifact",
    "ArtifactError",
    "CodebookCodec",
    "Codec",
    "CodecSpec",
    "CompositionError",
    "DenseCodec",
    "EncodedTensor",
    "Representation",
    "SparseCodebookCodec",
    "SparseCodec",
    "SurpCodec",
    "TensorRecord",
    "TernaryCodec",
    "available_codecs",
    "get_codec",
    "load",
    "read_artifact",
    "register_codec",
    "representation_of",
    "save",
]
