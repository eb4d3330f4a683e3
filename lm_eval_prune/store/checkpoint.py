"""Load a model to prune and write pruned checkpoints atomically (temp dir, then rename or exchange)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import pid_alive

log = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")

# Temporary siblings of OUT: ".OUT.<kind>-<host>-<pid>-<start>-<rand>"; host = boot id + PID namespace, start = the
# owner's start time in clock ticks, so a later run can tell a dead owner's leftovers from a live writer's.
TEMP_KINDS = ("tmp", "old", "swap", "probe")
MAX_NAME_BYTES = 180  # of OUT's last component: its temporaries ".OUT.<kind>-<tag>" must fit in NAME_MAX (255)
_TEMP_RE = re.compile(
    rf"^\.(?P<name>.+)\.(?P<kind>{'|'.join(TEMP_KINDS)})-"
    r"(?P<tag>(?P<host>[0-9a-f]{8}-[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-z]{8})$"
)
# Test hook: called with the name of each step of an install (the swap tests SIGKILL a child right after one).
_after_step: Callable[[str], None] | None = None
# RENAME_EXCHANGE is tried first; the swap tests set this to False to exercise the journal fallback.
USE_RENAME_EXCHANGE = True
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _step(name: str) -> None:
    if _after_step is not None:
        _after_step(name)


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _host_tag() -> str:
    """Eight hex digits for this boot of this machine, eight for this PID namespace (pids mean nothing elsewhere)."""
    boot = _read("/proc/sys/kernel/random/boot_id") or socket.gethostname()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(boot.strip().encode()).hexdigest()[:8] + f"-{namespace & 0xFFFFFFFF:08x}"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None without /proc."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def owner_tag() -> str:
    """``<host>-<pid>-<start>`` of this process, as written into the names of its temporary directories."""
    return f"{_host_tag()}-{os.getpid()}-{_start_time(os.getpid()) or 0}"


def _owner_alive(host: str, pid: int, start: int) -> bool:
    """False only when the owner is provably dead: same boot and PID namespace, and no process with that pid and
    start time. Another machine's or an earlier boot's temporaries are left alone (their owner cannot be checked)."""
    if host != _host_tag():
        return True
    now = _start_time(pid)
    if now is not None:
        return start in (0, now)
    if os.path.exists(f"/proc/{os.getpid()}/stat"):
        return False  # /proc works here and has no such pid
    return pid_alive(pid)


def temp_path(final: Path, kind: str, tag: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{tag}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` so that the rename that publishes it cannot outlive its data."""
    for current, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(current, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(current))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux ``renameat2(RENAME_EXCHANGE)``; False where that is not available."""
    if not USE_RENAME_EXCHANGE:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _lock_journal(journal: Path) -> int | None:
    """An fd holding an exclusive flock on the journal, or None when another process holds it or it is gone."""
    import fcntl

    try:
        fd = os.open(journal, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(journal).st_ino:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _finish_swap(final: Path, tag: str) -> None:
    """Take a journalled swap from wherever it stopped to its end.

    Every step is a rename or a removal that a rerun skips once done, so the owner and any later run (under the
    journal's flock) can call this. A journal means the new tree in ``tmp`` is complete: roll forward. ``OUT`` is
    missing only between the two renames, and then ``old`` holds the previous tree and ``tmp`` the new one.
    """
    tmp, old, journal = (temp_path(final, kind, tag) for kind in ("tmp", "old", "swap"))
    if tmp.is_dir():
        if os.path.lexists(final):
            if os.path.lexists(old):  # someone else wrote OUT after we moved it away: theirs is newer, drop ours
                _remove(tmp)
            else:
                os.rename(final, old)
                _step("moved-old")
        if tmp.is_dir():
            os.rename(tmp, final)
            _step("moved-new")
    elif not os.path.lexists(final) and old.is_dir():
        os.rename(old, final)  # not reachable through the steps above; never leave no OUT
    _fsync_dir(final.parent)
    _remove(journal)
    _step("committed")
    _remove(old)
    _step("removed")


def clean_stale(parent: str | Path) -> list[str]:
    """Finish the half swaps and remove the temporaries that dead processes left in ``parent``; their names.

    Every writer runs this before writing there, so a SIGKILL (or a power loss) costs disk space only until the next
    run. A live process's temporaries, and those of another machine or boot, are never touched.
    """
    parent = Path(parent)
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    found = [m for name in names if (m := _TEMP_RE.match(name))]
    dead: dict[str, bool] = {}
    for m in found:
        if m["tag"] not in dead:
            dead[m["tag"]] = not _owner_alive(m["host"], int(m["pid"]), int(m["start"]))
    done = []
    for m in found:  # journals first: their tmp holds a complete new OUT
        if m["kind"] != "swap" or not dead[m["tag"]]:
            continue
        fd = _lock_journal(parent / m.string)
        if fd is None:
            continue
        try:
            _finish_swap(parent / m["name"], m["tag"])
            log.warning("finished the interrupted replacement of %s", parent / m["name"])
            done.append(m.string)
        except OSError as exc:
            log.warning("could not finish the interrupted replacement of %s: %s", parent / m["name"], exc)
        finally:
            os.close(fd)
    for m in found:
        if m["kind"] == "swap" or not dead[m["tag"]]:
            continue
        if temp_path(parent / m["name"], "swap", m["tag"]).exists():
            continue  # another run is finishing this swap right now
        _remove(parent / m.string)
        done.append(m.string)
    if done:
        log.info("removed %d temporaries of dead processes from %s", len(done), parent)
    return done


@contextmanager
def _terminate_raises() -> Iterator[None]:
    """While a write runs, SIGTERM raises SystemExit(143) (as SIGINT raises KeyboardInterrupt), so the cleanup runs.

    Installed only in the main thread (Python delivers signals there) and only over the default handler: a handler
    someone else installed, or SIG_IGN, is theirs to keep. The previous handler is restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the renames of a swap, then deliver them: an exception between two renames
    would otherwise leave the cleanup to guess which tree is which."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler not in (signal.SIG_IGN, None):
            saved[sig] = handler
            signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


def _install(tmp: Path, final: Path, tag: str) -> None:
    """Publish the complete tree ``tmp`` as ``final``: one rename when there is no ``final``, else a swap.

    The swap is one ``renameat2(RENAME_EXCHANGE)`` where Linux and the filesystem offer it: at every instant ``final``
    is the old or the new tree, and a kill leaves only the old tree under the temporary name (removed by the next
    run). Elsewhere a journal ``.OUT.swap-TAG`` is created first, then OUT -> ``.OUT.old-TAG`` and
    ``.OUT.tmp-TAG`` -> OUT; a kill between those two renames leaves no OUT for an instant that only a dead process
    sees, and the next run that writes beside OUT (or checks it) finishes the swap from the journal.
    """
    try:
        os.rename(tmp, final)  # atomic; fails when a non-empty final exists
        _step("renamed")
        _fsync_dir(final.parent)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        if not final.is_dir() or final.is_symlink():
            raise PruneConfigError(f"output {str(final)!r} exists and is not a directory") from None
    if _exchange(tmp, final):
        _step("exchanged")
        _fsync_dir(final.parent)
        _remove(tmp)  # the old tree, now under the temporary name
        _step("removed")
        return
    journal = temp_path(final, "swap", tag)
    fd = os.open(journal, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        _fsync_dir(final.parent)
        _step("journal")
        _finish_swap(final, tag)
    finally:
        os.close(fd)


def output_path(out: str | Path) -> Path:
    """OUT as an absolute path with symlinks resolved (the swap replaces the directory a link points to, in place)."""
    text = os.fspath(out)
    if not str(text).strip():
        raise PruneConfigError(f"output {str(text)!r} is empty; give the path of a directory to create or replace")
    final = Path(os.path.realpath(os.path.expanduser(text)))
    if final.name in ("", ".", ".."):
        raise PruneConfigError(f"output {str(text)!r} is the filesystem root; give a directory to create or replace")
    if len(os.fsencode(final.name)) > MAX_NAME_BYTES:
        raise PruneConfigError(
            f"output name {final.name[:40]!r}... is {len(os.fsencode(final.name))} bytes long; at most "
            f"{MAX_NAME_BYTES} are allowed (its temporary siblings add about 70 to the filesystem's 255)"
        )
    return final


def check_not_source(out: str | Path, model: str) -> None:
    """OUT must not be the local model directory being pruned, nor a folder holding it: replacing it would delete
    the base model (and the weights being read)."""
    local = Path(model).expanduser()
    if not str(model).strip() or not local.exists():
        return
    source, final = Path(os.path.realpath(local)), output_path(out)
    if final == source or final in source.parents:
        what = "is" if final == source else "holds"
        raise PruneConfigError(
            f"output {str(out)!r} {what} the model directory {model!r} being pruned; write the checkpoint elsewhere"
        )


def _make_parent(final: Path, out: str | Path) -> None:
    """Create OUT's parent and prove that a directory can be made in it (root passes access() checks it then fails)."""
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = temp_path(final, "probe", f"{owner_tag()}-{secrets.token_hex(4)}")
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise PruneConfigError(
            f"output {str(out)!r} cannot be written: {exc.strerror or exc} ({exc.filename or parent})"
        ) from None


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an OUT that cannot be written before any weights load: empty path, a file, a parent that cannot hold a
    new directory, or a non-empty directory without ``overwrite``. Finishes a half swap left in its parent first."""
    final = output_path(out)
    if os.path.lexists(final.parent):
        clean_stale(final.parent)
    if os.path.lexists(final) and not final.is_dir():
        raise PruneConfigError(f"output {str(out)!r} exists and is not a directory")
    _make_parent(final, out)
    try:
        non_empty = final.is_dir() and any(final.iterdir())
    except OSError as exc:
        raise PruneConfigError(f"output {str(out)!r} cannot be read: {exc.strerror or exc}") from None
    if non_empty and not overwrite:
        raise PruneConfigError(f"output {str(out)!r} is not empty; pass --overwrite to replace it")
    return Path(out)


@contextmanager
def atomic_directory(out: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out`` (see :func:`_install`), on any failure,
    SIGINT or SIGTERM it is removed. ``durable`` fsyncs the tree before it is published (a power loss then cannot
    leave a published OUT with truncated files)."""
    final = output_path(out)
    _make_parent(final, out)
    clean_stale(final.parent)
    with ExitStack() as stack:
        stack.enter_context(_terminate_raises())
        while True:
            tag = f"{owner_tag()}-{secrets.token_hex(4)}"
            tmp = temp_path(final, "tmp", tag)
            try:
                tmp.mkdir()
                break
            except FileExistsError:
                continue
        try:
            yield tmp
            if durable:
                _fsync_tree(tmp)
            _step("ready")
            with _signals_deferred():
                _install(tmp, final, tag)
        except BaseException:
            if temp_path(final, "swap", tag).exists():  # the new tree was complete: finish, never drop OUT
                try:
                    _finish_swap(final, tag)
                except OSError:
                    log.warning("left an unfinished replacement of %s for the next run", final)
            else:
                _remove(tmp)
            raise


def checkpoint_zero_counts(directory: str | Path, linear_names: list[str]) -> dict[str, int]:
    """Zero count of each ``<name>.weight`` as written in the directory's safetensors files."""
    from safetensors import safe_open

    wanted = {f"{name}.weight": name for name in linear_names}
    counts: dict[str, int] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key in wanted:
                    counts[wanted[key]] = int((handle.get_tensor(key) == 0).sum())
    missing = set(linear_names) - set(counts)
    if missing:
        raise RuntimeError(f"written checkpoint lacks {sorted(missing)[0]}.weight")
    return counts


def write_checkpoint(model: Any, tokenizer: Any, report: PruneReport, directory: str | Path) -> None:
    """Write model, tokenizer and ``prune_report.json`` (sparsity measured on the written files) into ``directory``."""
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    report.set_measured(checkpoint_zero_counts(directory, [layer.name for layer in report.layers]))
    report.save(directory)
    if report.layer_scores is not None:  # LayerIF scores, beside the report (reusable as layerif_scores=PATH)
        Path(directory, "layer_scores.json").write_text(json.dumps({"scores": report.layer_scores}, indent=1) + "\n")


def save_pruned(model: Any, tokenizer: Any, report: PruneReport, out: str | Path) -> Path:
    """:func:`write_checkpoint` into ``out`` atomically: a failure leaves no ``out`` and no temporary files."""
    with atomic_directory(out) as tmp:
        write_checkpoint(model, tokenizer, report, tmp)
    return Path(out)


def load_linear_weights_(model: Any, directory: str | Path, linear_names: list[str]) -> None:
    """Copy the named linears' weights from a checkpoint directory into ``model`` in place (wherever they live).

    A weight found in two files is refused: which copy would win depends on file names, not on the checkpoint.
    """
    import torch
    from safetensors import safe_open

    modules = dict(model.named_modules())
    wanted = {f"{name}.weight": name for name in linear_names}
    done: dict[str, str] = {}
    with torch.no_grad():
        for file in sorted(Path(directory).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key in wanted:
                        if wanted[key] in done:
                            first = done[wanted[key]]
                            raise RuntimeError(f"checkpoint {directory} has {key} in {first} and {file.name}")
                        weight = modules[wanted[key]].weight
                        weight.copy_(handle.get_tensor(key).to(device=weight.device, dtype=weight.dtype))
                        done[wanted[key]] = file.name
    missing = set(linear_names) - set(done)
    if missing:
        raise RuntimeError(f"checkpoint {directory} lacks {sorted(missing)[0]}.weight")


def torch_dtype(name: str) -> Any:
    """``auto`` or a torch dtype from its name."""
    if name not in DTYPES:
        raise PruneConfigError(f"dtype={name!r} is not allowed; use {', '.join(DTYPES)}")
    if name == "auto":
        return "auto"
    import torch

    return getattr(torch, name)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, from its header and size alone (no tensor is read); None when sound."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"is truncated ({size} bytes)"
            length = int.from_bytes(head, "little")
            if length > min(size - 8, 100 << 20):
                return f"is truncated or not safetensors (header of {length} bytes in a file of {size})"
            header = json.loads(handle.read(length))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError):
        return "is not safetensors (unreadable header)"
    if not isinstance(header, dict):
        return "is not safetensors (header is not an object)"
    try:
        end = max([int(meta["data_offsets"][1]) for name, meta in header.items() if name != "__metadata__"] or [0])
    except (TypeError, KeyError, IndexError, ValueError):
        return "is not safetensors (bad tensor offsets)"
    if 8 + length + end != size:
        return f"is truncated or padded ({size} bytes; its header describes {8 + length + end})"
    return None


def check_model_dir(path: Path) -> None:
    """One-line PruneConfigError for a local path that is not a model directory or whose config cannot be used."""
    if not path.is_dir():
        raise PruneConfigError(f"model {str(path)!r} is a file; give a model directory or a Hub id")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PruneConfigError(f"model {str(path)!r} is not a model directory: it has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise PruneConfigError(f"model config {str(config_file)!r} is not valid JSON: {_first_line(exc)}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise PruneConfigError(f'model config {str(config_file)!r} has no model_type (e.g. "llama")')


def check_model_weights(path: Path, model_config: Any = None) -> None:
    """One-line PruneConfigError for missing, truncated or foreign weight files of a local model directory (headers
    and sizes only: no tensor is read). With ``model_config``, the tensors the model needs must be there with their
    shapes: transformers would otherwise fill a missing one with random values and prune those."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise PruneConfigError(f"model weights index {str(index)!r} is unreadable") from None
    else:
        shards = sorted(f.name for f in path.glob("*.safetensors"))
    if not shards and not any(path.glob("pytorch_model*.bin")):
        raise PruneConfigError(f"model {str(path)!r} has no weights (no *.safetensors or pytorch_model*.bin)")
    for shard in shards:
        problem = "is missing" if not (path / shard).is_file() else safetensors_problem(path / shard)
        if problem:
            raise PruneConfigError(f"model weights {str(path / shard)!r} {problem}")
    if model_config is not None and shards:
        check_weight_names(path, shards, model_config)


def _header(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return {name: meta for name, meta in header.items() if name != "__metadata__" and isinstance(meta, dict)}


def check_weight_names(path: Path, shards: list[str], model_config: Any) -> None:
    """Every parameter of the model (built on the meta device: no memory) is in the shards' headers, with its shape.

    Checked only when the names follow the model's own (most of them match): a checkpoint in another naming scheme
    is left to transformers' conversion.
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
    except Exception:  # an unusual config: transformers' own load will say what is wrong
        return
    expected = {name: tuple(param.shape) for name, param in model.named_parameters()}
    stored: dict[str, Any] = {}
    for shard in shards:
        stored.update(_header(path / shard))
    if len(set(expected) & set(stored)) < len(expected) / 2:
        return
    for name, shape in expected.items():
        meta = stored.get(name)
        if meta is None:
            raise PruneConfigError(f"model weights in {str(path)!r} lack {name} (the model needs it; re-download them)")
        if tuple(meta.get("shape", ())) != shape:
            raise PruneConfigError(
                f"model weights in {str(path)!r}: {name} has shape {tuple(meta.get('shape', ()))}, "
                f"the config implies {shape}"
            )


def load_config_and_tokenizer(model_id: str, revision: str | None = None) -> tuple[Any, Any]:
    """(model config, tokenizer) from a Hub id or local directory, with the architecture checked: no weights yet.

    A local directory is checked first (config, model_type, architecture, then weight files and their headers), so a
    broken model is one line naming the file before anything loads.
    """
    from transformers import AutoConfig, AutoTokenizer

    from lm_eval_prune.engine.model_utils import check_architecture

    if not str(model_id).strip():
        raise PruneConfigError("model '' is empty; give a Hub id or a model directory")
    local = Path(model_id).expanduser()
    if local.exists():
        check_model_dir(local)
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision)
    except OSError as exc:
        raise PruneConfigError(f"model {model_id!r} cannot be found: {_first_line(exc)}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PruneConfigError(f"model {model_id!r} has an unusable config: {_first_line(exc)}") from None
    check_architecture(config)
    if local.exists():
        check_model_weights(local, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PruneConfigError(f"model {model_id!r} has no usable tokenizer: {_first_line(exc)}") from None
    if isinstance(tokenizer, bool) or tokenizer is None:
        raise PruneConfigError(f"model {model_id!r} has no tokenizer files")
    return config, tokenizer


def load_model(model_id: str, dtype: str, device: str | None, revision: str | None = None) -> Any:
    """The causal LM's weights in ``dtype`` (``auto``: as stored), placed on ``device`` (None: CPU).

    Broken weight files become one line naming the model; running out of memory stays what it is.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    torch_type = torch_dtype(dtype)
    local = Path(model_id).expanduser()
    if local.exists():
        check_model_dir(local)
        check_model_weights(local)
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            model_id, revision=revision, dtype=torch_type, device_map=device, output_loading_info=True
        )
        model, info = loaded
    except (OSError, SafetensorError, json.JSONDecodeError) as exc:
        raise PruneConfigError(f"model {model_id!r} weights cannot be loaded: {_first_line(exc)}") from None
    except ValueError as exc:
        raise PruneConfigError(f"model {model_id!r} cannot be loaded: {_first_line(exc)}") from None
    except RuntimeError as exc:
        if "mismatched_sizes" not in str(exc) and "size mismatch" not in str(exc):
            raise
        raise PruneConfigError(f"model {model_id!r} weights do not match the shapes its config implies") from None
    missing = sorted((info or {}).get("missing_keys") or [])
    if missing:
        raise PruneConfigError(f"model {model_id!r} weights lack {missing[0]} (transformers would fill it at random)")
    return model
