"""Deployment: ONNX, torch.export (``.pt2``) and TorchScript files of any backbones model.

Exports always use an eval-mode copy (auxiliary heads are never in the graph). ONNX goes through
the exporter torch recommends in this version (``torch.onnx.export(..., dynamo=True)``, which is
torch.export underneath), with a dynamic batch and, on request, dynamic height and width: FPN
upsampling follows the input size because it interpolates to each lateral's runtime size.

Example:
    >>> backbones.export(backbones.create_model("resnet50"), "resnet50.onnx", dynamic_size=True)
    >>> session = onnxruntime.InferenceSession("resnet50.onnx")
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.core.files import atomic_path
from backbones.core.layers import FrozenBatchNorm2d
from backbones.core.vocabulary import EXPORT_FORMATS, dtype_name
from backbones.runtime.outputs import DTYPE_KEY, METADATA_KEY, EngineError, EngineModel, OutputStructure, first_line
from backbones.runtime.torchscript_builtins import forget_replaced_operators

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "ExportError",
    "check_destination",
    "check_opset",
    "export",
    "export_dynamic_shapes",
    "export_program",
    "load_exported",
    "max_opset",
    "min_dynamic_size",
    "output_names",
    "program_to_onnx",
]

FORMATS = EXPORT_FORMATS
# The precisions export writes: float32 files in every format, int8 QDQ as ONNX.
EXPORT_DTYPES = ("fp32", "int8")
_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript", ".xml": "openvino"}
DEFAULT_OPSET = 18
# The exporter (torch.onnx, dynamo=True) implements opset 18 upward: asked for less, it writes 18
# anyway after a long warning; asked for more than onnx knows, it fails deep inside.
MIN_OPSET = 18
# Names of the dynamic input axes in the ONNX file (torch.export calls them s0, s1, ...).
DYNAMIC_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
INPUT_NAME = "images"
MAX_BATCH = 1024
MAX_SIZE = 4096


class ExportError(RuntimeError):
    """An export that cannot be done as asked; the message says why and what to change."""


def max_opset() -> int:
    """The newest ONNX opset this torch's exporter accepts."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # a torch that moved the constant: trust the default only
        return DEFAULT_OPSET
    return int(ONNX_MAX_OPSET)


def check_opset(opset: int) -> int:
    """Return ``opset`` if the exporter supports it.

    Raises:
        ExportError: It is not an integer in ``MIN_OPSET..max_opset()``.

    Example:
        >>> check_opset(18)
        18
    """
    high = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= high:
        raise ExportError(f"ONNX opset {opset!r} is not supported; choose one from {MIN_OPSET} to {high}")
    return opset


def check_destination(path: str | Path, format: str | None = None) -> tuple[Path, str]:
    """The file to export to and its format, checked before any work (not a folder, a known format, writable).

    Raises:
        ExportError: ``path`` is a folder, its format is unknown, or it cannot be written.

    Example:
        >>> check_destination("resnet50.onnx")
        (PosixPath('resnet50.onnx'), 'onnx')
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.onnx'}")
    format = _format_for(path, format)
    if format == "openvino" and path.suffix.lower() != ".xml":
        raise ExportError(f"an OpenVINO IR is an .xml file beside its .bin; give a name such as {path.stem}.xml")
    _check_writable(path)
    return path, format


def _format_for(path: Path, format: str | None) -> str:
    if format is None:
        try:
            return _SUFFIXES[path.suffix.lower()]
        except KeyError:
            raise ExportError(
                f"cannot tell the format from {path.name!r}; pass format= one of {', '.join(FORMATS)} "
                f"(or use a .onnx, .pt2 or .pt file name)"
            ) from None
    if format not in FORMATS:
        raise ExportError(f"unsupported export format {format!r}; use one of {', '.join(FORMATS)}")
    return format


def _check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.onnx'}")
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"cannot write {path}: {folder} is a file, not a folder; give a path inside a folder")
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ExportError(f"cannot write {path}: permission denied")


def _example_input(model: nn.Module, batch: int) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (getattr(model, "in_chans", 3), 224, 224))
    return torch.randn(batch, channels, height, width)


def _meta_copy(model: nn.Module) -> nn.Module:
    """The same network on the meta device: rebuilt from its config when it has one (instant),
    else copied."""
    config = getattr(model, "model_config", None)
    if config:
        from backbones.models.factory import create_model

        options = {k: v for k, v in config.items() if k != "architecture"}
        with torch.device("meta"):
            return create_model(config["architecture"], **options).eval()
    return copy.deepcopy(model).to("meta").eval()


def min_dynamic_size(model: nn.Module, limit: int = MAX_SIZE) -> int:
    """The smallest height/width for which every feature map of ``model`` is at least 2 pixels.

    One exported graph cannot serve sizes where some map shrinks to a single pixel (PyTorch
    treats size-1 dimensions specially, so torch.export specialises on them), so this is where
    a dynamic height/width range starts. Found by running the model on the meta device (no
    arithmetic, no weights in memory).
    """
    config = getattr(model, "model_config", None)
    key = (repr(sorted(config.items())), limit) if config else None
    if key not in _MIN_DYNAMIC_SIZES:
        size = _search_min_dynamic_size(_without_norms(_meta_copy(model)), limit)
        if key is None:
            return size
        _MIN_DYNAMIC_SIZES[key] = size
    return _MIN_DYNAMIC_SIZES[key]


# By architecture configuration (what _meta_copy rebuilds from): weights do not change the answer,
# and searching takes seconds for the deepest networks.
_MIN_DYNAMIC_SIZES: dict[tuple[str, int], int] = {}


def _without_norms(probe: nn.Module) -> nn.Module:
    """``probe`` with its batch norms replaced by identities, which give the same shapes: on the meta
    device a batch norm runs through Python decompositions, 5-10x the time of a probe without them."""
    for name, child in probe.named_children():
        if isinstance(child, (nn.modules.batchnorm._NormBase, FrozenBatchNorm2d)):
            setattr(probe, name, nn.Identity())
        else:
            _without_norms(child)
    return probe


def _search_min_dynamic_size(probe: nn.Module, limit: int) -> int:
    maps: list[tuple[int, int]] = []

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        for t in torch.utils._pytree.tree_flatten(output)[0]:
            if isinstance(t, torch.Tensor) and t.dim() == 4:
                maps.append((int(t.shape[-2]), int(t.shape[-1])))

    hooks = [m.register_forward_hook(record) for m in probe.modules()]

    def spatial_maps(size: int) -> list[tuple[int, int]]:
        maps.clear()
        with torch.no_grad():
            probe(torch.empty(1, getattr(probe, "in_chans", 3), size, size, device="meta"))
        return list(maps)

    def smallest_dynamic_side(size: int) -> int:
        return min(min(m) for m, follows in zip(spatial_maps(size), dynamic, strict=True) if follows)

    low = max(1, getattr(probe, "min_input_size", 1))
    try:
        # Which maps follow the input size (a global pool's 1x1 is a constant, not a limit).
        dynamic = [a != b for a, b in zip(spatial_maps(low + 64), spatial_maps(low + 128), strict=True)]
        high = max(low, 64)
        while smallest_dynamic_side(high) < 2:
            if high >= limit:
                raise ExportError(f"no input up to {limit}x{limit} keeps every feature map above one pixel")
            low, high = high + 1, min(2 * high, limit)
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if smallest_dynamic_side(middle) >= 2 else (middle + 1, high)
    finally:
        for hook in hooks:
            hook.remove()
    return low


def export_dynamic_shapes(
    model: nn.Module, dynamic_batch: bool, dynamic_size: bool
) -> dict[str, dict[int, Any]] | None:
    """The ``dynamic_shapes`` for torch.export / the ONNX exporter.

    The batch may range over 1..1024; height and width over :func:`min_dynamic_size`..4096.
    """
    dims: dict[int, Any] = {}
    # Dim.DYNAMIC: must stay dynamic (an error rather than a silent specialisation), while
    # torch.export may simplify the guards a ceil-mode pooling chain produces.
    if dynamic_batch:
        dims[0] = torch.export.Dim.DYNAMIC(min=1, max=MAX_BATCH)
    if dynamic_size:
        low = min_dynamic_size(model)
        dims[2] = torch.export.Dim.DYNAMIC(min=low, max=MAX_SIZE)
        dims[3] = torch.export.Dim.DYNAMIC(min=low, max=MAX_SIZE)
    return {"x": dims} if dims else None


def output_names(model: nn.Module) -> list[str]:
    """The ONNX output names: ``logits`` for classifiers, the level names for extractors and FPNs."""
    info = getattr(model, "feature_info", None)
    if info and not hasattr(model, "num_classes"):
        return [f.name for f in info]  # feature extractors and FPNs return a dict of levels
    return ["logits"]


def _prepare(model: nn.Module, fold_norms: bool) -> nn.Module:
    if not fold_norms:
        return copy.deepcopy(model).eval()
    from backbones.runtime.fusion import folded_copy

    traced, _ = folded_copy(model)
    for name in ("feature_info", "num_classes", "pretrained_cfg", "in_chans", "min_input_size"):
        if hasattr(model, name):
            setattr(traced, name, getattr(model, name))
    return traced


def export(
    model: nn.Module,
    path: str | Path,
    format: str | None = None,
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    example_input: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    optimize: bool = False,
    check: bool = True,
    dtype: str | torch.dtype = "fp32",
    calibration: Any = None,
) -> Path:
    """Export ``model`` for deployment.

    Args:
        model: Any backbones model (classifier, ``features_only`` extractor, FPN).
        path: The file to write.
        format: ``"onnx"``, ``"pt2"`` (torch.export), ``"torchscript"`` or ``"openvino"`` (the IR:
            ``path`` is the ``.xml``, its weights go beside it as the ``.bin``; needs
            ``pip install backbones[openvino]``); by default from the suffix (``.onnx``, ``.pt2``,
            ``.pt``, ``.xml``). :func:`load_exported` runs ONNX and OpenVINO files.
        dynamic_batch: Let the batch size vary (ONNX and pt2).
        dynamic_size: Let height and width vary too (ONNX and pt2), from :func:`min_dynamic_size`
            up to 4096 pixels.
        example_input: The input traced with; by default 2 images of the model's input size.
        opset: The ONNX opset (default 18).
        optimize: Fold BatchNorm into the convolutions first (a smaller inference graph whose
            outputs equal the model's within fp32 rounding) and, for ONNX, run the exporter's
            graph optimizer (constant folding, redundant-op removal). Off by default: it doubles
            the export time, and onnxruntime optimizes the graph when it loads it anyway.
        check: Validate the ONNX file with ``onnx.checker`` after writing it.
        dtype: ``"fp32"`` (also ``"float32"`` or ``torch.float32``), or ``"int8"`` (ONNX and
            OpenVINO): for ONNX an int8 QDQ file quantized by onnxruntime's own tools on the
            ``calibration`` batches, then run once in onnxruntime to check it (see
            :mod:`backbones.runtime.onnx_int8`); for OpenVINO an IR quantized by NNCF on them.
        calibration: For int8: batches of preprocessed images, as ``optimize(dtype="int8")`` takes
            (:func:`backbones.calibration_batches` makes them).

    Returns:
        The path written.

    Raises:
        ExportError: Unsupported format or dtype, unwritable path, a missing exporter package, or
            int8 asked for a format other than ONNX or without calibration.
    """
    try:
        dtype = dtype_name(dtype, allowed=EXPORT_DTYPES, what="export's dtype")
    except ValueError as err:
        raise ExportError(str(err)) from None
    path, format = check_destination(path, format)
    if format == "onnx":
        check_opset(opset)
    if dtype == "int8" and format != "openvino":
        return _export_onnx_int8(
            model, path, format, calibration, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, opset=opset
        )
    network = _prepare(model, fold_norms=optimize)
    if format == "openvino":
        return _export_openvino(network, path, dtype, calibration, dynamic_batch, dynamic_size, example_input)
    if format == "torchscript":
        forget_replaced_operators()
        scripted = torch.jit.script(network)
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp))
        return path
    # Both other formats start from the same torch.export program.
    program = export_program(
        network, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, example_input=example_input
    )
    if format == "pt2":
        # A file object: torch.export.save wants a path to end in .pt2, and the temporary name does not.
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            torch.export.save(program, file)
    else:
        program_to_onnx(
            program, path, output_names(network), opset=opset, optimize=optimize, check=check,
            metadata=_structure_metadata(network, "fp32"),
        )  # fmt: skip
    return path


def _structure_metadata(network: nn.Module, dtype: str) -> dict[str, str]:
    """What :func:`load_exported` reads back from an ONNX file: the output structure and the precision."""
    structure = OutputStructure.from_names(output_names(network), getattr(network, "min_input_size", 1))
    return {METADATA_KEY: structure.to_json(), DTYPE_KEY: dtype}


def export_program(
    model: nn.Module,
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    example_input: torch.Tensor | None = None,
) -> torch.export.ExportedProgram:
    """The torch.export program that :func:`export` saves as ``.pt2`` and converts to ONNX.

    Args:
        model: The network to trace, in the mode it should be exported in (``export`` passes an
            eval-mode copy).
        dynamic_batch: Let the batch size vary (1 to 1024).
        dynamic_size: Let height and width vary, from :func:`min_dynamic_size` up to 4096 pixels.
        example_input: The input traced with; by default 2 images of the model's input size.

    Example:
        >>> program = export_program(backbones.create_model("resnet18").eval(), dynamic_size=True)
        >>> program.module()(torch.randn(3, 3, 100, 140)).shape
        torch.Size([3, 1000])
    """
    x = example_input if example_input is not None else _example_input(model, batch=2)
    shapes = export_dynamic_shapes(model, dynamic_batch, dynamic_size)
    if dynamic_size:
        x = _at_least_dynamic_minimum(x, min_dynamic_size(model), given=example_input is not None)
    with _without_unreduced_inequality_warnings():
        return torch.export.export(model, (x,), dynamic_shapes=shapes)


def _at_least_dynamic_minimum(x: torch.Tensor, low: int, given: bool) -> torch.Tensor:
    """The example input for a dynamic-size export: torch.export refuses one below the range's minimum.

    The default input (the model's own size, 32x32 for a model fine-tuned on small images) grows to
    the minimum; an input the caller chose is refused in one line that names the size to pass.
    """
    if min(x.shape[-2:]) >= low:
        return x
    if given:
        raise ExportError(
            f"the example input is {x.shape[-2]}x{x.shape[-1]}, below the {low}x{low} a dynamic-size "
            f"export starts at; pass an example_input of at least {low}x{low}"
        )
    return torch.randn(*x.shape[:-2], max(low, x.shape[-2]), max(low, x.shape[-1]))


def program_to_onnx(
    program: torch.export.ExportedProgram,
    path: str | Path,
    output_names: list[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    optimize: bool = False,
    check: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Convert a torch.export program (e.g. a loaded ``.pt2``) to ONNX; its dynamic dimensions stay dynamic.

    ``metadata`` goes into the file's ``metadata_props`` (what :func:`load_exported` reads).

    Raises:
        ExportError: onnx / onnxscript are not installed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 - the exporter needs it; fail early with a clear message
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx and onnxscript packages: `pip install onnx onnxscript` "
            "(or `pip install backbones[test]`)"
        ) from None
    check_opset(opset)
    path = Path(path)
    with _without_unreduced_inequality_warnings():
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=opset, input_names=[INPUT_NAME], output_names=output_names,
            optimize=optimize, verbose=False,
        )  # fmt: skip
    # Renamed in memory, then written once: VGG's file is half a gigabyte.
    _name_dynamic_axes(onnx_program.model)
    onnx_program.model.metadata_props.update(metadata or {})
    with atomic_path(path) as tmp:
        onnx_program.save(str(tmp), external_data=False)
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return path


class _DropUnreducedInequalities(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to reduce inequalities")


@contextlib.contextmanager
def _without_unreduced_inequality_warnings() -> Iterator[None]:
    """Drop torch's "Failed to reduce inequalities" warnings while exporting.

    With a dynamic size, torch's shape solver tries to simplify the range constraints of VGG's and
    GoogLeNet's sizes, fails inside sympy's printer, logs the traceback at warning level, and goes
    on: the program is the same and matches eager (the export tests check both). A user would see a
    30-line traceback for nothing. Other messages of that logger pass.
    """
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    drop = _DropUnreducedInequalities()
    shapes_log.addFilter(drop)
    try:
        yield
    finally:
        shapes_log.removeFilter(drop)


def _name_dynamic_axes(model: Any) -> None:
    """Rename the input's symbolic axes (an ``onnx_ir.Model``) to batch / height / width, wherever the
    same symbol appears."""
    import onnx_ir as ir

    renames = {
        dim.value: DYNAMIC_AXIS_NAMES[index]
        for index, dim in enumerate(model.graph.inputs[0].shape or ())
        if isinstance(dim, ir.SymbolicDim) and dim.value and index in DYNAMIC_AXIS_NAMES
    }
    if not renames:
        return

    def renamed(dim: Any) -> Any:
        return renames.get(dim.value, dim) if isinstance(dim, ir.SymbolicDim) else dim

    nodes = ir.traversal.RecursiveGraphIterator(model.graph)
    for value in [*model.graph.inputs, *model.graph.outputs, *(v for node in nodes for v in node.outputs)]:
        dims = [renamed(dim) for dim in value.shape or ()]
        if any(new is not old for new, old in zip(dims, value.shape or (), strict=True)):
            value.shape = ir.Shape(dims)


def _export_onnx_int8(model: nn.Module, path: Path, format: str, calibration: Any, **float_options: Any) -> Path:
    """The float ONNX file, quantized by onnxruntime on ``calibration``, then run once in onnxruntime."""
    import tempfile

    from backbones.runtime.onnx_int8 import quantize_onnx, run_onnx
    from backbones.runtime.quantize import calibration_tensors

    if format != "onnx":
        raise ExportError(
            f"int8 export writes ONNX or OpenVINO files only, not {format}; "
            "for int8 in PyTorch use backbones.optimize(model, dtype='int8')"
        )
    try:
        batches = calibration_tensors(calibration, getattr(model, "in_chans", 3), getattr(model, "min_input_size", 1))
    except ValueError as error:
        raise ExportError(str(error)) from None
    with tempfile.TemporaryDirectory(prefix="backbones-int8-") as work:
        float_path = Path(work) / "float.onnx"
        # The float graph is traced at the calibration size; a batch of 1 would fix the batch at 1.
        example = batches[0] if len(batches[0]) > 1 else batches[0].repeat(2, 1, 1, 1)
        export(model, float_path, "onnx", optimize=True, check=False, example_input=example, **float_options)
        with atomic_path(path) as written:
            quantize_onnx(float_path, written, batches, INPUT_NAME)
            _add_onnx_metadata(written, _structure_metadata(model, "int8"))
            with torch.no_grad():
                expected = torch.utils._pytree.tree_flatten(copy.deepcopy(model).eval()(batches[0]))[0]
            outputs = run_onnx(written, batches[0])
            shapes = [tuple(t.shape) for t in expected]
            if [tuple(t.shape) for t in outputs] != shapes or not all(bool(t.isfinite().all()) for t in outputs):
                raise ExportError(f"the int8 ONNX file did not run as the model does in onnxruntime (shapes {shapes})")
    return path


def _add_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Set ``metadata`` in the ONNX file at ``path``, rewritten in place (an int8 file is small)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [prop for prop in proto.metadata_props if prop.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _export_openvino(
    network: nn.Module,
    path: Path,
    dtype: str,
    calibration: Any,
    dynamic_batch: bool,
    dynamic_size: bool,
    example_input: torch.Tensor | None,
) -> Path:
    """The OpenVINO IR of ``network`` (int8: quantized by NNCF on ``calibration``): ``path`` and its ``.bin``."""
    import tempfile

    from backbones.runtime.openvino_engine import convert, openvino_module, quantize_nncf
    from backbones.runtime.quantize import calibration_tensors

    in_chans, min_size = getattr(network, "in_chans", 3), getattr(network, "min_input_size", 1)
    try:
        ov = openvino_module()
        batches = calibration_tensors(calibration, in_chans, min_size) if dtype == "int8" else None
        example = example_input if example_input is not None else batches[0] if batches else _example_input(network, 2)
        ov_model, _ = convert(network, example, dynamic_size=dynamic_size, dynamic_batch=dynamic_batch)
        if batches:
            ov_model = quantize_nncf(ov_model, batches)
    except (EngineError, ValueError) as error:
        raise ExportError(str(error)) from None
    ov_model.set_rt_info(dtype, DTYPE_KEY.split("."))
    # OpenVINO finds the .bin by the .xml's name: both are written under their final names in a
    # hidden folder, then renamed into place, the .bin first, so a complete .xml means a complete pair.
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as work,
        atomic_path(path) as xml_tmp,
        atomic_path(path.with_suffix(".bin")) as bin_tmp,
    ):
        ov.save_model(ov_model, str(Path(work) / "model.xml"), compress_to_fp16=False)  # fp32 weights stay fp32
        os.replace(Path(work) / "model.bin", bin_tmp)
        os.replace(Path(work) / "model.xml", xml_tmp)
    return path


def load_exported(path: str | Path, *, threads: int | None = None) -> EngineModel:
    """Run an exported ONNX file (in onnxruntime) or OpenVINO IR (in OpenVINO), outputs in the model's structure.

    The result is called like the model: a float batch in, torch tensors out (logits, or the
    OrderedDict of an extractor or FPN, as the file records; a file written elsewhere is read by
    its output names: a lone ``logits`` is a tensor).

    Args:
        path: A ``.onnx`` file, or the ``.xml`` of an IR (its ``.bin`` beside it).
        threads: Threads the engine uses; by default ``torch.get_num_threads()``.

    Raises:
        ExportError: No such file, another format, the engine is not installed, or the file does not load.

    Example:
        >>> backbones.export(model, "resnet50.xml")
        >>> logits = backbones.load_exported("resnet50.xml")(images)
    """
    from backbones.runtime.onnxruntime_engine import load_onnx
    from backbones.runtime.openvino_engine import load_ir

    path = Path(path).expanduser()
    loaders = {".onnx": load_onnx, ".xml": load_ir}
    if path.suffix.lower() not in loaders:
        raise ExportError(
            f"load_exported runs .onnx and OpenVINO .xml files, not {path.name!r}; load a .pt2 with "
            "torch.export.load and a TorchScript file with torch.jit.load"
        )
    if not path.is_file():
        raise ExportError(f"no exported file at {path}")
    try:
        return loaders[path.suffix.lower()](path, threads)
    except EngineError as error:
        raise ExportError(str(error)) from None
    except Exception as error:  # the engines' own parse errors are pages long
        raise ExportError(f"cannot load {path}: {first_line(error)}") from None
