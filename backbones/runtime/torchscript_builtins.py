"""Keep TorchScript from mistaking a module's attribute for a freed operator.

TorchScript recognises builtin operators by ``id()``: ``torch.jit._builtins`` keeps a table from
the id of each operator object to its name, and ``torch.jit.script`` looks up every value in a
module's ``__dict__`` there. When ``torch.library`` adds an overload to an operator that already
has a ``torch.ops`` packet, the packet gets a new operator object and the old one is freed, while
its id stays in the table. Importing torch's FX quantization or torchao does this to
``quantized_decomposed::quantize_per_tensor`` and ``dequantize_per_tensor``. A list allocated later
at the freed address, such as ``nn.Conv2d._reversed_padding_repeated_twice``, is then taken for
that operator, and scripting fails with "builtin cannot be used as a value" in
``Conv2d._conv_forward``: rarely, and only in a process that quantized before.

:func:`forget_replaced_operators` removes those entries; the int8 paths call it after importing
the quantization libraries, and the TorchScript export before scripting.
"""

from __future__ import annotations

import torch

__all__ = ["forget_replaced_operators", "replaced_operator_ids"]

# Only torch.ops packets register these namespaces' names; "aten" and "prim" also name the table's
# other entries (torch.add, math.ceil, torch.jit.is_scripting, ...), whose objects are not packets'.
_NAMESPACES_OF_OTHER_ENTRIES = ("aten", "prim")


def replaced_operator_ids() -> list[int]:
    """The ids TorchScript's builtin table keeps for operator objects that ``torch.library`` replaced.

    An entry counts as replaced when its operator's ``torch.ops`` packet now holds a different
    object: the packet held the only reference, so the old object is gone and its id may be reused.
    Returns an empty list when this torch keeps no such table.
    """
    table = _builtin_table()
    replaced = []
    for key, qualified_name in table.items():
        namespace, _, name = qualified_name.partition("::")
        if not name or namespace in _NAMESPACES_OF_OTHER_ENTRIES:
            continue
        # vars(): only the namespaces and packets already made; getattr would make (and register) new ones.
        namespace_module = vars(torch.ops).get(namespace)
        packet = vars(namespace_module).get(name) if namespace_module is not None else None
        current = getattr(packet, "_op", None)
        if current is not None and id(current) != key:
            replaced.append(key)
    return replaced


def forget_replaced_operators() -> int:
    """Remove the entries of :func:`replaced_operator_ids` from TorchScript's builtin table.

    Returns:
        How many entries were removed.

    Example:
        >>> import torch.ao.quantization.quantize_fx  # replaces two quantized_decomposed operators
        >>> forget_replaced_operators() >= 0
        True
        >>> replaced_operator_ids()
        []
    """
    table = _builtin_table()
    replaced = replaced_operator_ids()
    for key in replaced:
        table.pop(key, None)
    return len(replaced)


def _builtin_table() -> dict[int, str]:
    builtins = getattr(torch.jit, "_builtins", None)
    get_table = getattr(builtins, "_get_builtin_table", None)
    return get_table() if get_table is not None else {}
