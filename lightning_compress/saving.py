"""Saving a model as an artifact and loading one back: the model side of the file format.

:func:`save` finds what the compression methods decided (the model's representation), what the model was before
structural compression, the modules a method inserted, and hands the state dict to the codec layer's writer;
:func:`load` checks the file against the model it describes (built on ``meta`` first), resizes the model to the
stored shapes and fills it tensor by tensor.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_compress.arguments import check_bool, check_choice, check_metadata
from lightning_compress.codec.base import CodecSpec, dtype_from_name, dtype_name, forget_caches
from lightning_compress.codec.header import checked_max_elements, is_count
from lightning_compress.codec.reader import read_artifact
from lightning_compress.codec.records import Artifact, ArtifactError
from lightning_compress.codec.registry import architecture_builder, known_architectures, module_type
from lightning_compress.codec.template import buildable_kwargs
from lightning_compress.codec.writer import resolve_spec, tied_aliases, write_artifact
from lightning_compress.representation import find_representation
from lightning_compress.surgery import resize_to_state

__all__ = ["REFERENCE_ATTR", "artifact_module", "load", "metadata_path", "save", "trial_artifact", "trial_bytes"]

#: Module attribute set by structural compression: fp32 bytes of the model before it was made smaller.
REFERENCE_ATTR = "_lc_reference_fp32_bytes"
#: Modules a method inserts (step activations) hold a handful of values each.
_MAX_INSERTED_ELEMENTS = 2**20


def metadata_path(path: str | os.PathLike[str]) -> Path:
    """Where :class:`~lightning_compress.ArtifactWriter` puts an artifact's metadata by default: beside it, ``.json``.

    Examples:
        >>> metadata_path("runs/model.lcz")
        PosixPath('runs/model.json')
    """
    return Path(path).with_suffix(".json")


def artifact_module(model: nn.Module) -> nn.Module:
    """The module an artifact stores: a LightningModule may name its backbone via ``lc_artifact_module``."""
    inner = getattr(model, "lc_artifact_module", None)
    return inner if isinstance(inner, nn.Module) else model


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    codecs: Mapping[str, CodecSpec | str] | None = None,
    precision: str = "float32",
    metadata: Mapping[str, Any] | None = None,
    codecs_decided: bool = False,
) -> Path:
    """Write ``model`` to one compressed artifact file, atomically.

    Every tensor of ``model.state_dict()`` is written by a named codec: first ``codecs[name]`` if given, then the
    codec its representation calls for (what the compression callbacks decided, see
    :mod:`lightning_compress.representation`), else ``dense`` at ``precision``.

    Args:
        model: the module to store; a LightningModule exposing ``lc_artifact_module`` is unwrapped to it.
        path: destination file (suffix ``.lcz`` suggested); parent directories are created.
        codecs: per-tensor overrides, tensor name -> codec name or :class:`CodecSpec`.
        precision: ``"float32"`` (exact) or ``"float16"`` for tensors stored with the ``dense`` codec by default.
        metadata: JSON-able values stored in the header (accuracy, recipe name, ...); they cost their JSON's bytes.
        codecs_decided: the ``codecs`` are a compression method's decisions not yet in its representation (a
            callback measuring the file it is about to write): recorded as such, so the trial's header is the
            final file's, byte for byte.

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown codec, precision or tensor name in ``codecs``.

    Examples:
        >>> import tempfile, torch, lightning_compress as lc
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = lc.save(net, f"{d}/net.lcz")
        ...     fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        ...     back = lc.load(p, model=fresh)
        >>> x = torch.randn(5, 4)
        >>> torch.equal(net(x), back(x))
        True
    """
    check_choice("precision", precision, ("float32", "float16"))
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"`path` must be a file path (str or os.PathLike), got {path!r}.")
    if codecs is not None and not isinstance(codecs, Mapping):
        raise ValueError(f"`codecs` must be None or a mapping tensor name -> codec, got {type(codecs).__name__}.")
    check_metadata("metadata", metadata)
    check_bool("codecs_decided", codecs_decided)
    module = artifact_module(model)
    state = module.state_dict()
    for name, tensor in state.items():  # nothing is written for a diverged model
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"tensor {name!r} holds NaN or Inf values; nothing was written to {str(path)!r}.")
    param_names = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    aliases = tied_aliases(state)
    # each tensor's codec follows from its representation (what the compression methods decided, found also on a
    # module holding this one), then overrides; tensors nothing decided get the smallest exact codec their values allow
    found = find_representation(module)
    plan: dict[str, CodecSpec] = found.codec_plan()
    asked: dict[str, CodecSpec] = {}
    for name, spec in (codecs or {}).items():
        if name not in state:
            raise ValueError(f"`codecs` names tensor {name!r}, which the model does not have.")
        if name in aliases:
            raise ValueError(f"`codecs` names tensor {name!r}, an alias of {aliases[name]!r}: name that one.")
        asked[name] = resolve_spec(spec)

    return write_artifact(
        path,
        state,
        parameters=param_names,
        decided=plan,
        asked=asked,
        precision=precision,
        codecs_decided=codecs_decided,
        aliases=aliases,
        header={
            "architecture": getattr(module, "lc_spec", None),
            "modules": _inserted_modules(module),
            "metadata": dict(metadata or {}),
            "reference_fp32_bytes": _reference_bytes(module, state, aliases, found.original_shapes),
        },
    )


@contextmanager
def trial_artifact(module: nn.Module, codecs: Mapping[str, CodecSpec] | None = None) -> Iterator[Path]:
    """The artifact ``module`` would be written as now: a real file in a temporary directory, removed after.

    ``codecs`` are a method's decisions not yet in its representation (a stage about to be recorded): the trial's
    header is the final file's, byte for byte.
    """
    with tempfile.TemporaryDirectory() as tmp:
        yield save(module, Path(tmp) / "trial.lcz", codecs=codecs, codecs_decided=True)


def trial_bytes(module: nn.Module, codecs: Mapping[str, CodecSpec] | None = None) -> int:
    """Size of :func:`trial_artifact`: the bytes the file would have now.

    Examples:
        >>> trial_bytes(nn.Linear(4, 2)) > 10 * 4
        True
    """
    with trial_artifact(module, codecs) as path:
        return path.stat().st_size


def _reference_bytes(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    aliases: Mapping[str, str],
    original_shapes: Mapping[str, tuple[int, ...]],
) -> int | None:
    """fp32 bytes of the model before structural compression (``None``: it was not made smaller)."""
    if not original_shapes:
        return getattr(module, REFERENCE_ATTR, None)
    total = 0
    for name, tensor in state.items():
        if name not in aliases:
            numel = math.prod(original_shapes.get(name, tuple(tensor.shape)))
            total += numel * (4 if tensor.is_floating_point() else tensor.element_size())
    return total


def _inserted_modules(module: nn.Module) -> dict[str, dict[str, Any]]:
    return {
        name: {"type": sub.lc_module_type, "kwargs": sub.lc_module_kwargs()}
        for name, sub in module.named_modules()
        if name and module_type(getattr(type(sub), "lc_module_type", "")) is not None
    }


def _insert_modules(module: nn.Module, records: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    for name, record in records.items():
        cls = module_type(record["type"])
        if cls is None:
            raise ArtifactError(f"{path}: module {name!r} has type {record['type']!r}, unknown to this library.")
        try:
            if not isinstance(module.get_submodule(name), cls):
                with torch.device("meta"):  # its size first: constructor arguments come from the header
                    size = sum(t.numel() for t in cls(**record["kwargs"]).state_dict().values())
                if size > _MAX_INSERTED_ELEMENTS:
                    raise ValueError(f"it would hold {size:,} values")
                module.set_submodule(name, cls(**record["kwargs"]))
        except Exception as err:
            raise ArtifactError(
                f"{path}: header field 'modules.{name}' does not fit the model: {type(err).__name__}: {err}"
            ) from err


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    strict: bool = True,
    max_elements: int | None = None,
) -> nn.Module:
    """Rebuild the module stored in an artifact.

    Zoo models are rebuilt from their recorded name and arguments. Any other module needs ``model``, a fresh
    instance of its class; parameters whose stored shape differs (structurally compressed layers) are resized
    before loading, so the returned module's forward equals the saved one's.

    Before any tensor is decoded, the header is checked against the model it describes: the architecture is built
    on the ``meta`` device (no memory), inserted modules must be registered types, and every tensor record must name
    a tensor of that model, with its dtype, its number of dimensions and no dimension larger than the model's (a
    structurally compressed layer may be smaller). A zoo model must still run on its input shape with the stored
    shapes (checked on ``meta``) and keep its output shape. Path arguments recorded in the architecture
    (``weights_path``, ...) are ignored: the artifact's own tensors replace those weights, and a file never makes
    the reader open another file.

    Args:
        path: the artifact written by :func:`save`.
        model: a fresh instance to fill, required when the artifact has no zoo architecture.
        strict: passed to ``load_state_dict``.
        max_elements: the most values the artifact may decode to (see :func:`read_artifact`).

    Returns:
        The module in eval mode, on CPU.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ArtifactError: if the file is not a valid artifact, or does not fit the model it describes (or ``model``).
        ValueError: if the architecture is unknown and no ``model`` was given.

    Examples:
        >>> import tempfile, torch, lightning_compress as lc
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = lc.load(lc.save(net, f"{d}/net.lcz"), model=torch.nn.Sequential(
        ...         torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)))
        >>> x = torch.randn(2, 4)
        >>> torch.equal(back(x), net(x)), back.training
        (True, False)
    """
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be None or a fresh torch.nn.Module to fill, got {type(model).__name__}.")
    check_bool("strict", strict)
    max_elements = checked_max_elements(max_elements)
    artifact = read_artifact(path, max_elements=max_elements)
    if model is None:
        if not artifact.architecture:
            raise ValueError(
                f"{artifact.path}: the artifact was saved from a module outside the model zoo; "
                "pass `model=` a fresh instance of its class to fill."
            )
        _check_zoo_structure(artifact, max_elements)
        model = _build_zoo_model(artifact, torch.device("cpu"))
    module = artifact_module(model)
    _insert_modules(module, artifact.modules, artifact.path)
    _check_records(module, artifact, strict)
    _load_tensor_by_tensor(module, artifact)
    return model.eval()


def _load_tensor_by_tensor(module: nn.Module, artifact: Artifact) -> None:
    """Decode each tensor into the module and drop it: the model is never held twice (whole decoded state + model).

    The shapes come from the header (structurally compressed layers are resized first, no decoding needed); the
    names were checked against the module by :func:`_check_records`.
    """
    shapes = {r.name: torch.empty(r.shape, dtype=dtype_from_name(r.dtype), device="meta") for r in artifact.tensors}
    resize_to_state(module, shapes | {alias: shapes[name] for alias, name in artifact.aliases.items()})
    aliases: dict[str, list[str]] = {}
    for alias, name in artifact.aliases.items():
        aliases.setdefault(name, []).append(alias)
    try:
        for record in artifact.tensors:
            tensor = artifact._decode(record)
            try:
                names = (record.name, *aliases.get(record.name, []))
                module.load_state_dict(dict.fromkeys(names, tensor), strict=False)
            except RuntimeError as err:
                raise ArtifactError(f"{artifact.path}: the tensors do not fit the model: {err}") from err
            del tensor
    finally:
        forget_caches()


def _build_zoo_model(artifact: Artifact, device: torch.device) -> nn.Module:
    """The recorded zoo architecture, built on ``device`` (``meta`` for checks); path arguments dropped."""
    arch = artifact.architecture or {}
    name = arch.get("name")
    builder = architecture_builder(name) if isinstance(name, str) else None
    if builder is None:
        raise ArtifactError(
            f"{artifact.path}: header field 'architecture.name' is {name!r}; "
            f"the model zoo has {known_architectures()}"
            + (
                ""
                if known_architectures()
                else " (nothing registered: use lightning_compress.load, or import lightning_compress.models)"
            )
            + "."
        )
    kwargs = buildable_kwargs(arch.get("kwargs", {}))
    try:
        with device:
            model = builder(**kwargs)
        object.__setattr__(model, "lc_spec", {"name": name, "kwargs": kwargs})  # a re-save keeps the architecture
        return model
    except Exception as err:
        raise ArtifactError(
            f"{artifact.path}: header field 'architecture.kwargs' does not build {name!r}: {type(err).__name__}: {err}"
        ) from err


def _check_zoo_structure(artifact: Artifact, max_elements: int) -> None:
    """Build the architecture on ``meta``, bound its size, and check that the stored shapes still run."""
    meta = torch.device("meta")
    skeleton = _build_zoo_model(artifact, meta)
    dense_elements = sum(t.numel() for t in skeleton.state_dict().values())
    if dense_elements > max_elements:
        raise ArtifactError(
            f"{artifact.path}: header field 'architecture.kwargs' describes a model of {dense_elements:,} values, more "
            f"than max_elements={max_elements:,}; pass a larger `max_elements` if the file is genuine."
        )
    in_shape = _input_shape(skeleton, artifact)
    reference = _meta_forward(skeleton, in_shape, artifact) if in_shape is not None else None
    with meta:
        _insert_modules(skeleton, artifact.modules, artifact.path)
    _check_records(skeleton, artifact, strict=True)
    dense_shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    smaller = [r.name for r in artifact.tensors if r.shape != dense_shapes.get(r.name, r.shape)]
    if smaller and artifact.reference_fp32_bytes is None:
        raise ArtifactError(
            f"{artifact.path}: tensors {smaller[:3]} are smaller than the architecture's, but header field "
            "'reference_fp32_bytes' (set by structural compression) is null."
        )
    resize_to_state(
        skeleton, {r.name: torch.empty(r.shape, dtype=dtype_from_name(r.dtype), device=meta) for r in artifact.tensors}
    )
    if in_shape is not None:
        output = _meta_forward(skeleton, in_shape, artifact)
        if reference is not None and output.shape != reference.shape:
            raise ArtifactError(
                f"{artifact.path}: the stored shapes change the model's output from {tuple(reference.shape)} to "
                f"{tuple(output.shape)}."
            )


def _input_shape(model: nn.Module, artifact: Artifact) -> tuple[int, ...] | None:
    arch = artifact.architecture or {}
    in_shape = arch.get("kwargs", {}).get("in_shape", getattr(model, "lc_in_shape", None))
    if isinstance(in_shape, list | tuple) and all(is_count(s) for s in in_shape):
        return (1, *in_shape)
    return None


def _meta_forward(model: nn.Module, in_shape: tuple[int, ...], artifact: Artifact) -> torch.Tensor:
    try:
        with torch.no_grad():
            return model.eval()(torch.empty(in_shape, device="meta"))
    except Exception as err:
        raise ArtifactError(
            f"{artifact.path}: the stored tensor shapes do not chain into a working model: {err}"
        ) from err


def _check_records(module: nn.Module, artifact: Artifact, strict: bool) -> None:
    """Every record names a tensor of ``module`` with its dtype and rank, and no dimension larger than its own."""
    expected = module.state_dict(keep_vars=True)
    for record in artifact.tensors:
        where = f"{artifact.path}: tensor {record.name!r}"
        current = expected.get(record.name)
        if current is None:
            if strict:
                raise ArtifactError(f"{where} is not a tensor of the model ({type(module).__name__}).")
            continue
        if record.dtype != dtype_name(current.dtype):
            raise ArtifactError(f"{where}: header field 'dtype' is {record.dtype!r}, the model's is {current.dtype}.")
        if len(record.shape) != current.dim() or any(s > c for s, c in zip(record.shape, current.shape, strict=True)):
            raise ArtifactError(
                f"{where}: header field 'shape' is {list(record.shape)}, which does not fit the model's "
                f"{list(current.shape)} (a compressed layer may only be smaller)."
            )
    if strict:
        missing = sorted(set(expected) - {r.name for r in artifact.tensors} - set(artifact.aliases))
        if missing:
            raise ArtifactError(f"{artifact.path}: the artifact lacks tensors of the model: {missing[:5]}.")
