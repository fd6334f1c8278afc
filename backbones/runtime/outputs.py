"""A model's output structure, kept when another engine runs it: a tensor, or named maps.

OpenVINO and onnxruntime return a flat list of arrays. A classifier's one output is its logits; a
``features_only`` extractor or an FPN returns an ``OrderedDict`` of maps. :class:`OutputStructure`
records which (and the names, in order) so that :class:`EngineModel`, the callable
``optimize(backend=...)`` and ``load_exported`` return, gives back what the model itself returns.
The structure travels inside exported files as JSON (ONNX metadata, OpenVINO ``rt_info``) under
:data:`METADATA_KEY`. :class:`EngineError` is what a backend that cannot run says.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from backbones.core.inputs import check_image_batch

__all__ = ["DTYPE_KEY", "METADATA_KEY", "EngineError", "EngineModel", "OutputStructure", "first_line"]

METADATA_KEY = "backbones.outputs"
# Beside it: the precision the file computes in ("fp32" or "int8").
DTYPE_KEY = "backbones.dtype"
# A classifier's single output, as export names it.
LOGITS = "logits"


class EngineError(RuntimeError):
    """A backend that is not installed, or cannot take this model or precision; the message names it and the fix."""


def first_line(error: BaseException) -> str:
    """The first line of an engine's exception (converters raise pages of their internals)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class OutputStructure:
    """What a model returns: one tensor (``named=False``) or an OrderedDict of ``names`` in order.

    Attributes:
        names: The output names, in the order the engines return them (``("logits",)`` for a tensor).
        named: Whether the model returns an OrderedDict keyed by ``names``.
        min_input_size: The smallest height and width the model accepts.
    """

    names: tuple[str, ...]
    named: bool
    min_input_size: int = 1

    @classmethod
    def of(cls, output: Any, min_input_size: int = 1) -> OutputStructure:
        """The structure of one eager output of a model.

        Raises:
            TypeError: The output is neither a tensor nor a dict of tensors.
        """
        if isinstance(output, Tensor):
            return cls((LOGITS,), named=False, min_input_size=min_input_size)
        if isinstance(output, dict) and all(isinstance(v, Tensor) for v in output.values()):
            return cls(tuple(str(k) for k in output), named=True, min_input_size=min_input_size)
        raise TypeError(
            f"other engines run models returning a tensor or a dict of tensors, not {type(output).__name__}"
        )

    @classmethod
    def from_names(cls, names: Sequence[str], min_input_size: int = 1) -> OutputStructure:
        """The structure of a file that carries no metadata: a lone ``logits`` output is a tensor."""
        names = tuple(names)
        return cls(names, named=names != (LOGITS,), min_input_size=min_input_size)

    def flatten(self, output: Any) -> list[Tensor]:
        """The tensors of ``output`` in the order of :attr:`names`."""
        return [output[name] for name in self.names] if self.named else [output]

    def unflatten(self, tensors: Sequence[Tensor]) -> Tensor | OrderedDict[str, Tensor]:
        """The model's own output from the engine's list of tensors."""
        if len(tensors) != len(self.names):
            raise RuntimeError(f"the engine returned {len(tensors)} outputs where the model has {len(self.names)}")
        return OrderedDict(zip(self.names, tensors, strict=True)) if self.named else tensors[0]

    def to_json(self) -> str:
        """The structure as the JSON text stored in exported files."""
        return json.dumps({"names": list(self.names), "named": self.named, "min_input_size": self.min_input_size})

    @classmethod
    def from_json(cls, text: str) -> OutputStructure:
        """Read what :meth:`to_json` wrote."""
        data = json.loads(text)
        return cls(tuple(data["names"]), bool(data["named"]), int(data.get("min_input_size", 1)))


class EngineModel(nn.Module):
    """A network run by another engine (OpenVINO, onnxruntime), called like the model it came from.

    Inputs are checked as the model checks them, given to the engine as float32, and the outputs
    come back as torch tensors in the model's own structure, in the input's dtype.

    Attributes:
        backend: Which engine runs it: ``"openvino"`` or ``"onnxruntime"``.
        dtype: The precision it computes in: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        structure: The :class:`OutputStructure` the outputs are given back in.
        timings: Only on what ``optimize(backend="auto")`` returns: ``{backend: seconds per call,
            or why it was not used}``.
    """

    def __init__(
        self,
        run: Callable[[Any], Sequence[Any]],
        structure: OutputStructure,
        backend: str,
        dtype: str,
        input_shape: Sequence[int | None],
        source: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self._run = run
        self.structure = structure
        self.backend = backend
        self.dtype = dtype
        # [C, H, W]; None where the engine takes any size.
        self.input_shape = tuple(input_shape)
        self.in_chans = int(self.input_shape[0] or getattr(source, "in_chans", 3))
        self.min_input_size = structure.min_input_size
        for name in ("feature_info", "pretrained_cfg", "num_classes", "out_channels"):
            if source is not None and hasattr(source, name):
                setattr(self, name, getattr(source, name))

    def forward(self, x: Tensor) -> Any:
        check_image_batch(x, self.in_chans, self.min_input_size)
        fixed = [(size, given) for size, given in zip(self.input_shape[1:], x.shape[2:], strict=True) if size]
        if any(size != given for size, given in fixed):
            height, width = self.input_shape[1:]
            raise ValueError(
                f"this {self.backend} model was compiled for {height}x{width} images, got "
                f"{x.shape[2]}x{x.shape[3]}; resize the images, or build it with dynamic_size=True"
            )
        out_dtype = x.dtype
        with torch.inference_mode():
            outputs = self._run(x.detach().to(torch.float32).contiguous().numpy())
        tensors = [torch.from_numpy(out).to(out_dtype) for out in outputs]
        return self.structure.unflatten(tensors)

    def train(self, mode: bool = True) -> EngineModel:
        if mode:
            raise RuntimeError("an optimized model is for inference only; train the original model instead")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"backend={self.backend}, dtype={self.dtype}, outputs={list(self.structure.names)}"
