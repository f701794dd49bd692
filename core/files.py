"""File plumbing every family shares: safe atomic writes, safe reads, JSON-able values, versions.

Every file LayerMerge writes (checkpoints, run states, tables, meta.json, solutions, metrics,
ONNX) goes through one write policy, :func:`atomic_write` (with :func:`atomic_torch_save`,
:func:`atomic_write_text` and :func:`atomic_write_bytes` on top):

- the data goes to a temporary file beside the target, which is then renamed over it: readers
  never see half a file, and a crash, a full disk or a read-only folder leaves the target as it
  was and no temporary file behind;
- the target may only replace a regular file: a directory, a device or a pipe is refused, never
  replaced; a symbolic link is followed, so the file it points to is updated; a replaced file
  keeps its permissions;
- a file the user names (``--out FILE``, ``--onnx FILE``) needs an existing folder (a typo in it
  is refused, not silently created); files a job writes inside its own output folder may create
  their subfolders (``create_folder=True``);
- every failure is one :class:`~core.errors.OutputWriteError` naming the path and the reason.

Files are read through :func:`read_untrusted_checkpoint` (``weights_only=True``: nothing is
unpickled). :func:`library_versions` is the one record of what wrote a file, used by checkpoints
and tables alike (meta.json's ``versions``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import LayerMergeError, OutputWriteError, UnsafeCheckpointError
from core.safe_load import safe_torch_load

__all__ = [
    "check_tensors",
    "read_untrusted_checkpoint",
    "library_versions",
    "jsonable",
    "check_output_file",
    "check_output_folder",
    "atomic_write",
    "atomic_write_all",
    "OutputFile",
    "bytes_writer",
    "torch_bytes",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
]


def read_untrusted_checkpoint(source: str | Path | bytes) -> tuple[Any, str]:
    """``torch.load(weights_only=True)`` of a file or its bytes, and how to name it in errors.

    Raises:
        UnsafeCheckpointError: missing, unreadable, or it would need unsafe unpickling.
    """
    name = "the given bytes" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray):
        return safe_torch_load(io.BytesIO(bytes(source)), name), name
    path = Path(source)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UnsafeCheckpointError(f"checkpoint {path} {what}")
    try:
        with path.open("rb") as handle:
            return safe_torch_load(handle, name), name
    except OSError as exc:
        raise UnsafeCheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a checkpoint or a measurement."""
    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for module in ("numpy", "torchvision", "onnx", "onnxruntime"):
        with contextlib.suppress(ImportError):
            versions[module] = str(__import__(module).__version__)
    versions["layermerge_studio"] = "0.1.0"
    return versions


def jsonable(value: Any, *, what: str = "value") -> Any:
    """``value`` as plain JSON types (tuples become lists), so ``weights_only`` can read it.

    Raises:
        LayerMergeError: ``value`` holds something JSON cannot express.
    """
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise LayerMergeError(f"{what} is not JSON-able: {exc}") from exc


def check_output_file(path: str | Path, *, what: str = "file", create_folder: bool = False) -> Path:
    """Where ``path`` would be written under the write policy, refusing it if it cannot be.

    Call it before long work, so that a typo in ``--out`` is refused at once, not after the work.

    Args:
        path: the file to write.
        what: what the file is, for messages ("the compressed checkpoint").
        create_folder: the folder may be missing (it would be created); it must not be a file.

    Returns:
        The target: ``path`` with ``~`` expanded and symbolic links resolved.

    Raises:
        OutputWriteError: the folder is missing (unless ``create_folder``) or not a folder, or
            ``path`` is a directory, a device, a pipe or anything but a regular file.
    """
    target = Path(path).expanduser()
    with contextlib.suppress(OSError, RuntimeError):
        target = target.resolve()
    folder = target.parent
    if not folder.is_dir():
        why = None
        if folder.exists():
            why = "is not a folder"
        elif not create_folder:
            why = "does not exist"
        elif _blocked(folder):
            why = "cannot be created: a file is in its way"
        if why is not None:
            raise OutputWriteError(f"cannot write {what} to {path}: folder {folder} {why}")
    _target_mode(target, path, what)
    return target


def check_output_folder(path: str | Path, *, what: str = "output folder") -> Path:
    """Refuse an output folder that could never be written, before any work (nothing is created).

    The folder itself may be missing (a job creates it, with its parents); it must not be a file,
    nor lie under one.

    Raises:
        OutputWriteError: ``path`` or one of its parents is a file.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputWriteError(f"{what} {path} exists and is not a folder")
    if not folder.exists() and _blocked(folder):
        raise OutputWriteError(f"cannot create {what} {path}: a file is in its way")
    return folder


def atomic_write(
    path: str | Path,
    writer: Callable[[Path], object],
    *,
    what: str = "file",
    create_folder: bool = False,
) -> Path:
    """Write a file with ``writer(temporary_path)``, then rename it over ``path`` (the policy of
    this module's docstring).

    Args:
        path: the file to write.
        writer: writes the whole file at the path it is given (any way: ``torch.save``, an ONNX
            exporter); it may replace that file, which exists and is empty when it is called.
        what: what the file is, for messages.
        create_folder: create the folder (and its parents) when missing.

    Returns:
        The path written (``path`` with links resolved).

    Raises:
        OutputWriteError: the target is not writable under the policy, or the write or the
            rename fails (a full disk, a read-only folder...); ``path`` is then as it was.
        Exception: what ``writer`` raises for other reasons, after the temporary file is removed.
    """
    return atomic_write_all([OutputFile(path, writer, what)], create_folder=create_folder)[0]


@dataclass(frozen=True)
class OutputFile:
    """One file of :func:`atomic_write_all`: where, how to write it, and what it is called."""

    path: str | Path
    writer: Callable[[Path], object]
    what: str = "file"


def atomic_write_all(files: Sequence[OutputFile], *, create_folder: bool = False) -> list[Path]:
    """Write several files together: all of them, or (on any failure) none.

    Every target is checked first, every file is written to its temporary file, and only when
    all are written are they renamed over their targets; a failure on the way removes the
    temporary files and leaves every target as it was (a compressed checkpoint and its ONNX).

    Returns:
        The paths written, in order.

    Raises:
        OutputWriteError: as :func:`atomic_write`, naming the file that failed.
    """
    targets = [check_output_file(f.path, what=f.what, create_folder=create_folder) for f in files]
    if len({str(t) for t in targets}) < len(targets):
        raise OutputWriteError(
            f"cannot write {' and '.join(f.what for f in files)}: two of them name the same file"
        )
    staged: list[str] = []
    created: list[Path] = []  # folders made here: removed again if the write fails
    current = files[0] if files else None
    done = False
    try:
        for output, target in zip(files, targets, strict=True):
            current = output
            mode = _target_mode(target, output.path, output.what)
            if create_folder:
                created += _make_folder(target.parent)
            handle, tmp = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
            )
            os.close(handle)
            staged.append(tmp)
            # mkstemp makes the file private (0600); keep a replaced file's mode, else rw-r--r--
            os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else 0o644)
            output.writer(Path(tmp))
        for output, target, tmp in zip(files, targets, list(staged), strict=True):
            current = output
            os.replace(tmp, target)
            staged.remove(tmp)
        done = True
    except Exception as exc:
        # a writer may wrap the OSError of its file in an error of its own (an ONNX exporter)
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if not isinstance(cause, OSError) or isinstance(exc, OutputWriteError):
            raise
        reason = cause.strerror or " ".join(str(cause).split()) or type(cause).__name__
        where = f"{current.what} to {current.path}" if current is not None else "the files"
        raise OutputWriteError(f"cannot write {where}: {reason}") from exc
    finally:
        for tmp in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not done:
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: the output location is left as it was
    return targets


def bytes_writer(data: bytes | memoryview) -> Callable[[Path], None]:
    """A writer for :func:`atomic_write_all` that writes ``data`` (and syncs it to the disk)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as stream:
            _write_all(stream, data)
            stream.flush()
            os.fsync(stream.fileno())

    return write


def torch_bytes(obj: Any) -> memoryview:
    """``torch.save`` of ``obj`` in memory: serialized before any file is touched."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def atomic_write_bytes(
    path: str | Path, data: bytes | memoryview, *, what: str = "file", create_folder: bool = False
) -> Path:
    """Write ``data`` to ``path`` under the write policy (see :func:`atomic_write`)."""
    return atomic_write(path, bytes_writer(data), what=what, create_folder=create_folder)


def atomic_write_text(
    path: str | Path, text: str, *, what: str = "file", create_folder: bool = False
) -> Path:
    """Write ``text`` (UTF-8) to ``path`` under the write policy (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(), what=what, create_folder=create_folder)


def atomic_torch_save(
    obj: Any, path: str | Path, *, what: str = "checkpoint", create_folder: bool = True
) -> Path:
    """``torch.save`` ``obj`` to ``path`` under the write policy (see :func:`atomic_write`).

    The object is serialized in memory first, so a write failure is always an ``OSError`` of the
    file (one :class:`OutputWriteError`), never torch's ``RuntimeError`` from inside its writer.
    ``create_folder`` defaults to True for the files jobs write in their own folders; pass False
    for a file the user named.
    """
    return atomic_write_bytes(path, torch_bytes(obj), what=what, create_folder=create_folder)


def _write_all(stream: Any, data: bytes | memoryview) -> None:
    """The one place bytes reach a file (tests make it fail as a full disk would)."""
    stream.write(data)


def _target_mode(target: Path, path: str | Path, what: str) -> int | None:
    """The mode of the file ``target`` replaces (None when absent); anything else is refused."""
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputWriteError(f"cannot write {what} to {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputWriteError(
            f"cannot write {what} to {path}: it is {kind}, and only a regular file is replaced"
        )
    return mode


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` with its parents; the folders created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _blocked(folder: Path) -> bool:
    """True when a parent of the missing ``folder`` is a file (it could never be created)."""
    for parent in folder.parents:
        if parent.exists():
            return not parent.is_dir()
    return False


def check_tensors(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, Any], name: str, *, what: str = "spec"
) -> None:
    """``given`` holds exactly the names, shapes and kinds of ``expected`` (a skeleton's
    state_dict), all finite: what every family checks before loading untrusted tensors."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
            )
        raise UnsafeCheckpointError(
            f"{name}: state_dict does not match the {what}: {'; '.join(parts)}"
        )
    for key, tensor in expected.items():
        value = given[key]
        if not isinstance(value, torch.Tensor):
            raise UnsafeCheckpointError(f"{name}: {key!r} is not a tensor")
        if tuple(value.shape) != tuple(tensor.shape):
            raise UnsafeCheckpointError(
                f"{name}: {key!r} has shape {tuple(value.shape)}, the {what} says "
                f"{tuple(tensor.shape)}"
            )
        if value.is_floating_point() != tensor.is_floating_point():
            raise UnsafeCheckpointError(f"{name}: {key!r} has dtype {value.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UnsafeCheckpointError(
                f"{name}: {key!r} holds NaN or infinity: the file is damaged or comes from a "
                "run that diverged"
            )
