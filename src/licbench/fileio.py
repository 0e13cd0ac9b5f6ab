"""Atomic writes: an output is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory so that the final
    ``os.replace`` is atomic; on any exception it is removed. It is created as
    ``open()`` would create ``path`` (mode 0666 less the umask, so a group
    sharing a DVC cache or a results folder can read it), and fsynced before
    the rename, the directory after it: once this returns, a crash leaves the
    new file, never an empty or partial one. An OSError without a file name (a
    ``write()`` on a full disk) is raised again naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path)
    try:
        yield tmp
        replace_durably(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _create_beside(path: Path) -> Path:
    # Not mkstemp: it creates files with mode 0600 whatever the umask.
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished file ``tmp`` onto ``path`` (same directory) so that
    a crash leaves one of the two whole: fsync the file, rename, fsync the folder."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, obj) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_path`. A write that
    fails (a full disk) raises the OSError, which torch would wrap in a
    RuntimeError that names neither the file nor the cause."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise


def load_tensors(path: str | os.PathLike, what: str = "checkpoint", *, mmap: bool = False):
    """What ``torch.save`` wrote to ``path``, read with ``weights_only=True``.

    Every checkpoint, training state and weights file is read here. A file
    whose pickle would import code (an object with ``__reduce__``, a pickled
    model) is refused with :class:`PickledCodeError` naming what it would call;
    nothing of it runs, since torch's weights-only unpickler never imports it
    and the globals are found by reading the pickle's opcodes. ``what`` names
    the file in messages ("SAM checkpoint", "training state").
    """
    import pickle

    import torch

    from .errors import CheckpointError, PickledCodeError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Said of any pickle not written by torch.save; the refusal below says more.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a {what}") from None
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    except Exception as exc:  # torch reports damage in many ways (UnpicklingError, struct.error, ...)
        code = _foreign_globals(path)
        if code:
            raise PickledCodeError(
                f"{path}: this {what} holds pickled code, not tensors (it would run "
                f"{', '.join(code[:3])}{' ...' if len(code) > 3 else ''}); refused, nothing in it was run"
            ) from None
        # Not torch's own text for an unpickling failure: it advises weights_only=False.
        lines = [] if isinstance(exc, pickle.UnpicklingError) else str(exc).strip().splitlines()
        detail = f": {lines[0][:200]}" if lines else ""
        raise CheckpointError(f"{path}: not a loadable {what} (damaged, or not a PyTorch file{detail})") from None


def _foreign_globals(path: Path) -> list[str]:
    """The globals (``module.name``) the pickles in a torch file would import
    beyond what torch's weights-only unpickler allows, found without unpickling."""
    import zipfile

    import torch

    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = set(_get_allowed_globals())
    except ImportError:  # a private helper: without it, only torch's rebuild functions pass
        allowed = set()
    allowed |= {f"{g.__module__}.{g.__qualname__}" for g in torch.serialization.get_safe_globals()
                if hasattr(g, "__qualname__")}
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.endswith(".pkl"):
                        with archive.open(name) as stream:
                            found += _pickle_globals(stream)
        else:  # a plain pickle, or torch's legacy format: several pickles one after another
            with open(path, "rb") as stream:
                for _ in range(5):
                    found += _pickle_globals(stream)
    except (OSError, zipfile.BadZipFile):
        pass
    return [g for g in dict.fromkeys(found)
            if g not in allowed and not g.startswith("torch._utils._rebuild_")]


def _pickle_globals(stream) -> list[str]:
    """Globals named by the next pickle in ``stream`` (GLOBAL, INST, STACK_GLOBAL);
    stops quietly where the bytes stop being a pickle."""
    import pickletools

    strings = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING")
    no_push = ("PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP")
    found: list[str] = []
    memo: dict = {}
    pushed: list = []  # the values of the last pushes, strings or None
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in ("GLOBAL", "INST"):
                found.append(_python3_name(*str(arg).split(" ", 1)))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                if len(pushed) >= 2 and isinstance(pushed[-1], str) and isinstance(pushed[-2], str):
                    found.append(_python3_name(pushed[-2], pushed[-1]))
                else:
                    found.append("<a global the pickle builds>")
                pushed.append(None)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif name in strings:
                pushed.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
            elif name not in no_push:
                pushed.append(None)
            del pushed[:-2]
    except (ValueError, EOFError, UnicodeDecodeError):
        pass
    return found


def _python3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 spells it: pickles of protocol 2 (torch.save's)
    name Python 2's modules (``__builtin__.print``)."""
    import _compat_pickle

    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"
