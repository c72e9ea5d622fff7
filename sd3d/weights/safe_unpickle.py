"""A pickle module that can read checkpoints but cannot run code.

Pickle runs code only through the globals it looks up (``find_class``) and then calls. Here the
lookup is an allow-list of tensor/storage rebuild functions, dtypes, plain containers and the numpy
scalar/array helpers real checkpoints use; every other global (a Lightning callback, ``os.system``,
``builtins.eval`` ...) becomes an :class:`InertGlobal` subclass whose instances only record the
arguments and state they were given. So a malicious ``__reduce__`` yields a harmless placeholder
instead of running, and a checkpoint that pickles foreign objects still yields its tensors.

Pass this module as ``torch.load(..., weights_only=False, pickle_module=safe_unpickle)``: torch then
uses our :class:`Unpickler` for ``data.pkl`` (its own wrapper only maps storage names) and reads the
tensor bytes itself.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import pickle
from typing import Any, ClassVar
import torch
import io

# (module, name) pairs that may be imported. Everything here is a constructor of plain data:
# calling it with arbitrary pickled arguments cannot reach the file system, the network or exec.
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch.nn.parameter", "Parameter"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch", "UntypedStorage"),
        ("torch.storage", "UntypedStorage"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("_codecs", "encode"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    ]
)


class InertGlobal:
    """Stands in for a global the unpickler refused to import; never runs any of the pickled code.

    Calling the class (pickle REDUCE / NEWOBJ) makes an instance that keeps the arguments; BUILD,
    SETITEMS and APPENDS only record their data. ``refused`` is the dotted name that was refused.
    """

    refused: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertGlobal:
        self = object.__new__(cls)
        self.__dict__.update(args=args, kwargs=kwargs, state=None, items=[], elements=[])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to initialise: ``__new__`` recorded the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"].append((key, value))

    def append(self, value: Any) -> None:
        self.__dict__["elements"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["elements"].extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.refused}>"


def _is_torch_dtype(module: str, name: str) -> bool:
    if module != "torch":
        return False

    return isinstance(getattr(torch, name, None), torch.dtype)


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose global lookup is an allow-list; other globals become placeholders."""

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._placeholders: dict[str, type[InertGlobal]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol < 3 pickles, e.g. ``__builtin__.set``) -> Python 3 names; the
        # allow-list is then checked on the mapped name, as ``pickle.Unpickler.find_class`` would.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _ALLOWED or _is_torch_dtype(module, name):
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                pass  # e.g. numpy.core vs numpy._core, or an older torch: fall through to a placeholder
        return self._placeholder(f"{module}.{name}")

    def _placeholder(self, dotted: str) -> type[InertGlobal]:
        if dotted not in self._placeholders:
            cls = type(dotted.rsplit(".", 1)[-1], (InertGlobal,), {"refused": dotted})
            self._placeholders[dotted] = cls
        return self._placeholders[dotted]


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted unpickler (torch calls this for legacy-format headers)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:

    return Unpickler(io.BytesIO(data), **kwargs).load()
