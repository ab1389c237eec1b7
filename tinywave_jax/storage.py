"""Where files live: local folders and object storage (gs://) behind one path type.

`path(p)` is the one way the package turns a user's path into something to read or write: a
`gs://bucket/key` (or any other `scheme://`) becomes an `etils.epath.Path` (gcsfs underneath; orbax
reaches the same objects through tensorstore), a local path stays a `pathlib.Path` (which
`etils.epath` would use underneath anyway) so that the POSIX guarantees built on it (O_EXCL locks,
same-file checks through symlinks, renames) keep their meaning. Both share the pathlib subset the
package uses (`/`, name, parent, exists, is_dir, is_file, iterdir, mkdir, read_*/write_*, open,
unlink). Never call `.resolve()` on a remote path: pathlib would turn `gs://b/x` into `./gs:/b/x`.

Object storage has no folders, renames or appends: each object write is atomic (a reader sees the
old object or the new one), anything spanning several objects is not; see docs/reliability.md for
what each writer does instead.

Endpoints and credentials: the standard settings of each client. STORAGE_EMULATOR_HOST points
google-cloud-storage and gcsfs at an emulator, TENSORSTORE_GCS_HTTP_URL points tensorstore (orbax's
array reads and writes) at it; real GCS uses Application Default Credentials
(GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth application-default login`, or a VM's service
account). `check_gcs(path, write=...)` fails at start-up with one line naming the bucket and the
setting to fix instead of a library traceback after the first checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Union
from urllib.parse import urlsplit

from etils import epath

from .errors import ConfigError, InputError, MissingInputError, TinywaveError, first_line

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

AnyPath = Union[str, os.PathLike]


class UnsafeNameError(TinywaveError, ValueError):
    """A name read from outside (an object listing, an index or manifest) that would not stay
    inside the folder it is joined to: absolute, or with an empty, '.' or '..' part."""


def safe_relpath(rel: str, where: str) -> str:
    """`rel` (a '/'-separated name from a listing, index or manifest) if joining it to a folder
    stays inside that folder; else UnsafeNameError naming `where` (the listing or file) and the
    name. Every name from outside passes here before it becomes a local path: an object
    `prefix/../../x` in a bucket must not write `x` anywhere on this disk."""
    parts = rel.split("/")
    if (
        not rel
        or "\x00" in rel
        or rel.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or re.match(r"^[A-Za-z]:", rel)
    ):
        raise UnsafeNameError(
            f"{where}: the name {rel!r} would lead outside its folder (an absolute path or an "
            "empty, '.' or '..' part); refusing to use it as a local path (remove or rename "
            "that object or entry)"
        )
    return rel


class StorageAccessError(TinywaveError, PermissionError):
    """An object-storage path that cannot be reached: no credentials, no such bucket, no write
    access; the message names the bucket and the setting to fix."""


def is_remote(p: AnyPath | None) -> bool:
    """Whether `p` names object storage (`gs://...`, any `scheme://`)."""
    return (
        p is not None and _SCHEME.match(os.fspath(p) if not isinstance(p, str) else p) is not None
    )


SCHEMES = ("gs",)  # the object stores the package supports (tested against a GCS endpoint)


class UnsupportedSchemeError(TinywaveError, ValueError):
    """A `scheme://` path other than gs:// (s3://, file://, memory://, ...)."""


def check_scheme(p: AnyPath) -> None:
    """Raises UnsupportedSchemeError, one line, for a `scheme://` path whose scheme is not in
    SCHEMES (a library ImportError or KeyError otherwise, deep in a command)."""
    m = _SCHEME.match(os.fspath(p) if not isinstance(p, str) else p)
    if m is not None and m.group(1) not in SCHEMES:
        hint = " (write a local path without file://)" if m.group(1) == "file" else ""
        raise UnsupportedSchemeError(
            f"{p}: {m.group(1)}:// paths are not supported; use a local path or gs://BUCKET/..."
            + hint
        )


def path(p: AnyPath):
    """`p` as a path object: etils.epath.Path for `scheme://` paths, pathlib.Path otherwise."""
    if is_remote(p):
        check_scheme(p)
        _configure_gcsfs()
        return epath.Path(str(p))
    return Path(p)


def absolute(p: AnyPath):
    """`path(p)`, made absolute for a local path ('.' and '..' folded, symlinks kept)."""
    return path(p) if is_remote(p) else Path(os.path.abspath(p))


def bucket(p: AnyPath) -> str:
    """The bucket of `scheme://bucket/key`."""
    rest = _SCHEME.sub("", str(p), count=1)
    return rest.split("/", 1)[0]


_CONFIGURED = False


def _configure_gcsfs() -> None:
    """gcsfs caches folder listings per process; other writers (tensorstore under orbax, other
    processes) do not invalidate that cache, so listings would go stale. Turn it off once, before
    the first gs:// filesystem is made."""
    global _CONFIGURED
    if not _CONFIGURED:
        import fsspec.config  # fsspec comes with gcsfs (the gcs extra): gs:// only

        for proto in ("gs", "gcs"):
            conf = fsspec.config.conf.setdefault(proto, {})
            conf.setdefault("use_listings_cache", False)
            # gcsfs waits on a silent endpoint without end unless given a per-request timeout
            conf.setdefault("requests_timeout", deadline_s())

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            # gcsfs asks the real control API for each bucket's type and warns on every
            # request when an emulator (without credentials) cannot answer
            logging.getLogger("gcsfs").setLevel(logging.ERROR)
        # gcsfs logs each retried request (with its traceback) at ERROR before the named error
        # it ends in: those are debug detail, shown only when asked for
        logging.getLogger("gcsfs").addFilter(_RetryLogsAtDebug())
        _CONFIGURED = True


class _RetryLogsAtDebug:
    """A logging filter: gcsfs's records become DEBUG records, dropped unless debug logging is
    on (the root logger at DEBUG, or TINYWAVE_STORAGE_DEBUG=1)."""

    def filter(self, record) -> bool:

        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return bool(os.environ.get("TINYWAVE_STORAGE_DEBUG")) or logging.getLogger().isEnabledFor(
            logging.DEBUG
        )


def fs(p: AnyPath):
    """The fsspec filesystem behind a remote path (gcsfs for gs://)."""
    import fsspec  # fsspec comes with gcsfs (the gcs extra): gs:// only

    check_scheme(p)
    _configure_gcsfs()
    proto = _SCHEME.match(str(p)).group(1)
    return fsspec.filesystem("gcs" if proto == "gs" else proto)


def _credentials_problem() -> str | None:
    """Why Application Default Credentials cannot be found, or None (also None with an emulator,
    which needs none)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return None
    try:
        import google.auth  # the gcs extra: gs:// only
        import google.auth.exceptions
    except ImportError:
        return "google-auth is not installed (pip install gcsfs)"
    try:
        google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError as e:
        return first_line(e)
    return None


_CHECKED: set[tuple[str, bool]] = set()
# how long the start-up check waits for a connection to each endpoint (gcsfs would retry a
# refused or silent endpoint for about 30 s before its error)
CONNECT_TIMEOUT_S = 10.0


def _endpoints() -> list[tuple[str, str]]:
    """(URL, what to check) of every endpoint a gs:// run will use: gcsfs's and tensorstore's."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        ts = os.environ.get("TENSORSTORE_GCS_HTTP_URL") or emulator
        out = [(emulator, "STORAGE_EMULATOR_HOST"), (ts, "TENSORSTORE_GCS_HTTP_URL")]
        return out if ts != emulator else out[:1]
    return [("https://storage.googleapis.com", "the network (a proxy, a firewall)")]


def _unreachable(url: str) -> str | None:
    """Why no TCP connection to `url` opens within CONNECT_TIMEOUT_S, or None."""

    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def check_gcs(p: AnyPath | None, write: bool = False, what: str = "path") -> None:
    """For a gs:// `p`: fails (StorageAccessError, one line naming the bucket and the setting to
    fix) when no credentials are found, the bucket does not exist, or (`write`) an object cannot
    be written and deleted under `p`. Local paths and other schemes pass untouched."""
    if p is None:
        return
    check_scheme(p)
    if not str(p).startswith("gs://"):
        return
    key = (str(p), write)
    if key in _CHECKED:
        return
    try:
        import gcsfs  # noqa: F401  (the gcs extra: is it installed?)
    except ImportError:
        raise StorageAccessError(
            f"{what} {p}: gs:// paths need gcsfs: pip install 'tinywave_jax[gcs]'"
        ) from None
    name = bucket(p)
    if not name:
        raise StorageAccessError(f"{what} {p}: names no bucket (gs://BUCKET/...)")
    emulators = {
        k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")
    }
    if bool(emulators["STORAGE_EMULATOR_HOST"]) != bool(emulators["TENSORSTORE_GCS_HTTP_URL"]):
        have, lack = sorted(emulators, key=lambda k: not emulators[k])
        raise StorageAccessError(
            f"{what} {p}: {have} is set but {lack} is not: gcsfs and tensorstore (orbax's "
            "array reads and writes) would reach different endpoints (one of them the real GCS, "
            "where it waits for credentials); set both to the emulator's URL, or neither"
        )
    problem = _credentials_problem()
    if problem is not None:
        raise StorageAccessError(
            f"{what} {p}: no Google Cloud credentials to reach bucket {name!r} ({problem}); set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file or run `gcloud auth "
            "application-default login` (STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL "
            "select an emulator instead)"
        )
    for url, setting in _endpoints():  # at once, not after gcsfs's retries
        problem = _unreachable(url)
        if problem is not None:
            raise StorageAccessError(
                f"{what} {p}: cannot reach {url}: {problem}; check {setting} and rerun"
            )
    gcs = fs(p)
    try:
        found = gcs.exists(name)
    except Exception as e:  # gcsfs raises HttpError, OSError, ... for refused or failed requests
        raise StorageAccessError(
            f"{what} {p}: cannot reach bucket {name!r}: {first_line(e)}; check the bucket name, "
            "GOOGLE_APPLICATION_CREDENTIALS (the account needs storage access) and "
            "STORAGE_EMULATOR_HOST"
        ) from None
    if not found:
        raise StorageAccessError(
            f"{what} {p}: bucket {name!r} does not exist (or these credentials cannot see it); "
            "create it (`gcloud storage buckets create gs://{name}`) or fix the path".replace(
                "{name}", name
            )
        )
    if write:
        tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe = f"{str(p).rstrip('/')}/.tinywave-write-check-{tag}"
        try:
            gcs.pipe_file(probe, b"tinywave write check\n")
            gcs.rm_file(probe)
        except Exception as e:
            raise StorageAccessError(
                f"{what} {p}: cannot write to bucket {name!r}: {first_line(e)}; the account "
                "of GOOGLE_APPLICATION_CREDENTIALS (or the VM's service account) needs "
                "roles/storage.objectAdmin on the bucket"
            ) from None
    bound_tensorstore_retries()  # orbax's reads and writes there end within the deadline too
    _CHECKED.add(key)


# what identifies an object's content (gcsfs's names for GCS's fields): a cached copy is valid only
# while these match; the size alone does not tell a rewritten object of equal size (ArrayRecord
# files are padded to equal sizes) from the old one
_IDENTITY = ("generation", "crc32c", "md5Hash", "etag", "size")


def _listing(gcs, base: str, where: str) -> dict[str, dict]:
    """{relative name: content identity} of every object under the remote folder `base`, each
    name checked by safe_relpath (folder placeholders, names ending in '/', are not files)."""
    stripped = _SCHEME.sub("", base, count=1)
    out = {}
    for name, info in gcs.find(base, detail=True).items():
        if not name.startswith(stripped + "/") or name.endswith("/"):
            continue
        rel = safe_relpath(name[len(stripped) + 1 :], f"{where} (object listing)")
        out[rel] = {k: str(info[k]) for k in _IDENTITY if info.get(k) is not None}
    return out


def rel_files(root: AnyPath) -> list[str]:
    """Every file under `root` (local or remote), as sorted '/'-separated relative paths."""
    if is_remote(root):
        base = str(root).rstrip("/")
        gcs = fs(root)
        return sorted(_listing(gcs, base, str(root)))
    out = []
    root = Path(root)
    for r, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(r).relative_to(root)
        out += [(rel / name).as_posix() for name in files]
    return sorted(out)


def copy_tree(src: AnyPath, dst: AnyPath, last: tuple[str, ...] = ()) -> list[str]:
    """Copies every file under `src` to the same relative path under `dst` (local or remote,
    either side; remote to remote is a server-side copy), the files named in `last` after all
    others (a commit marker); returns the relative paths copied."""
    files = rel_files(src)
    order = [f for f in files if f not in last] + [f for f in last if f in files]
    s, d = str(src).rstrip("/"), str(dst).rstrip("/")
    for rel in order:
        a, b = f"{s}/{rel}", f"{d}/{rel}"
        if is_remote(a) and is_remote(b):
            fs(a).copy(a, b)
        elif is_remote(a):
            Path(b).parent.mkdir(parents=True, exist_ok=True)
            fs(a).get_file(a, b)
        elif is_remote(b):
            fs(b).put_file(a, b)
        else:
            Path(b).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a, b)
    return order


def rmtree(p: AnyPath) -> None:
    """Removes a folder (local) or every object under a prefix (remote); absent is fine."""
    if is_remote(p):
        gcs = fs(p)
        base = str(p).rstrip("/")
        files = gcs.find(base)
        if files:
            gcs.rm(files)
        return

    shutil.rmtree(p, ignore_errors=True)


def size(p) -> int:
    """The size in bytes of a local or remote file."""
    st = p.stat() if hasattr(p, "stat") else path(p).stat()
    return int(st.st_size if hasattr(st, "st_size") else st.length)


def sha256_file(p) -> str:
    """The sha256 hex digest of a local or remote file (the one definition: checkpoints,
    teacher caches, vocoders and the demo's packages record and check files with it)."""
    try:
        with path(p).open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None


MIRROR_MANIFEST = ".tinywave-mirror.json"


def temp_tag() -> str:
    """HOST-PID-RANDOM: whoever finds a temporary folder later can tell whether its writer is
    alive (same host: ask for the pid)."""
    host = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname())[:63] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_dead_temps(folder: Path, prefix: str) -> list[Path]:
    """Removes the local temporary folders `folder/PREFIX{HOST-PID-RANDOM}` whose writer, a
    process on this host, is gone (a killed download or build leaves hundreds of MB that nothing
    else removes); returns them. Live writers' and other hosts' folders are left alone."""
    host = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname())[:63] or "host"
    pattern = re.compile(re.escape(prefix + host) + r"-(\d+)-[0-9a-f]{8}(?:-.*)?")
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive (or cannot tell)
        except ProcessLookupError:
            pass
        except OSError:
            continue

        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def local_mirror(remote: AnyPath, what: str = "folder") -> Path:
    """A local copy of the remote folder `remote`, for readers that need local files (ArrayRecord
    corpora are read by a C++ reader that opens local paths only). Downloaded once per host into
    TINYWAVE_CACHE_DIR (default TMPDIR/tinywave-cache)/SCHEME/BUCKET/KEY and reused while every
    object's name and content identity (generation, crc32c, md5, etag, size: _IDENTITY) still
    match the remote listing (recorded in MIRROR_MANIFEST); every name is checked (safe_relpath)
    before it becomes a local path; the copy
    is made in a temporary sibling and renamed into place, so a killed download is never used."""

    from .outputs import check_remote_complete  # import cycle: outputs.py imports storage

    check_gcs(remote, what=what)
    check_remote_complete(remote, what)  # a killed commit's partial copy is not mirrored
    base = str(remote).rstrip("/")
    gcs = fs(base)
    stripped = _SCHEME.sub("", base, count=1)
    listing = _listing(gcs, base, str(remote))
    if not listing:
        raise MissingInputError(f"{what} not found: {remote}")
    root = Path(os.environ.get("TINYWAVE_CACHE_DIR") or tempfile.gettempdir()) / "tinywave-cache"
    dest = root / _SCHEME.match(base).group(1) / stripped
    manifest = dest / MIRROR_MANIFEST
    try:
        if json.loads(manifest.read_text()) == listing:
            return dest
    except (OSError, ValueError):
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(dest.parent, f".{dest.name}.tmp-")
    tmp = dest.with_name(f".{dest.name}.tmp-{temp_tag()}")
    try:
        for rel in sorted(listing):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            gcs.get_file(f"{base}/{rel}", str(tmp / rel))
        (tmp / MIRROR_MANIFEST).write_text(json.dumps(listing))
        if dest.exists():  # an older, different copy
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process on this host finished first: use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# libraries whose errors mean an object-storage request failed (after gcsfs's own retries)
_STORAGE_LIBS = ("aiohttp", "gcsfs", "google.auth", "google.api_core", "google.cloud")


# how tensorstore (orbax's reads and writes) reports a request that failed after its retries
_TENSORSTORE_GAVE_UP = re.compile(r"All \d+ retry attempts failed|CURL error")


def storage_failure(e: BaseException) -> str | None:
    """A one-line message when `e` (or what caused it) is an object-storage request that failed
    in the middle of a command (the bucket became unreachable, credentials expired): the start-up
    check (check_gcs) had passed. None for anything else. It names parameter `resume` (an error
    quoting it says so in `param`)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (
            type(e).__module__.startswith(_STORAGE_LIBS)
            or type(e).__name__ == "FSTimeoutError"
            or _TENSORSTORE_GAVE_UP.search(str(e))
        ):
            return (
                f"an object-storage request failed: {first_line(e, with_type=True)}; check "
                "the network, the bucket and the credentials (GOOGLE_APPLICATION_CREDENTIALS, or "
                "STORAGE_EMULATOR_HOST / TENSORSTORE_GCS_HTTP_URL for an emulator) and rerun "
                "(runs: with resume=True)"
            )
        e = e.__cause__ or e.__context__
    return None


# Every storage operation has a deadline (issue 29): orbax's checkpoint writes go through
# tensorstore, whose requests retry with their own schedule (32 tries, up to 32 s apart), and a
# stalled request can wait without end; a training run that lost its bucket never ended.
DEADLINE_ENV = "TINYWAVE_STORAGE_DEADLINE_S"
DEFAULT_DEADLINE_S = 1800.0  # a whole save or restore of a large state to GCS fits well inside


class StorageDeadlineError(TinywaveError, TimeoutError):
    """A storage operation (a checkpoint save, its background commit, a restore) that did not
    end within the deadline; the message names the path, the operation and the setting."""


class StorageRequestError(TinywaveError, OSError):
    """A storage operation whose requests failed after their retries (the bucket lost in the
    middle of it); the message names the path, the operation and the request's error."""


def deadline_s() -> float:
    """The deadline of one storage operation, in seconds: TINYWAVE_STORAGE_DEADLINE_S or 1800."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return DEFAULT_DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"{DEADLINE_ENV}={raw!r}: not a positive number of seconds")
    return value


_ABANDONED: list[threading.Thread] = []
_LOST: list[str] = []  # the operations that ran past their deadline or failed on the bucket


def abandoned() -> bool:
    """Whether an operation ran past its deadline and was left behind (its threads, and orbax's
    non-daemon commit thread, may still wait: the program then exits without joining them)."""
    return bool(_ABANDONED)


def forget_lost() -> None:
    """Starts a new command or run with no operation counted as lost (a process that runs
    several, such as a test session or a notebook, would otherwise skip their cleanups)."""
    _ABANDONED.clear()
    _LOST.clear()


def lost() -> bool:
    """Whether a storage operation of this process ran past its deadline or failed on the
    bucket: what would wait on it again (orbax's close, a last upload) is skipped, so the named
    error is the one the command ends with."""
    return bool(_LOST)


def within_deadline(fn, what: str, where: AnyPath):
    """fn() for object storage (`where` is remote) bounded by deadline_s(): past it,
    StorageDeadlineError naming `where` and `what`, and fn is left running in a daemon thread.
    Local paths: fn() as is (a local disk reports its own errors)."""
    if not is_remote(where):
        return fn()
    limit = deadline_s()
    box: dict = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=work, name=f"tinywave storage: {what}", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        _ABANDONED.append(worker)
        _LOST.append(what)
        raise StorageDeadlineError(
            f"{where}: {what} did not finish within {limit:g} s ({DEADLINE_ENV}): bucket "
            f"{bucket(where)!r} is unreachable or too slow; what was complete before stays "
            "intact (an unfinished checkpoint step has no commit marker and is never used); "
            "check the network and credentials and rerun (runs: with resume=True)",
            param=(None, "resume"),
        )
    if "error" in box:
        failed = storage_failure(box["error"])
        if failed is not None:  # named with the path and the operation it broke
            _LOST.append(what)
            raise StorageRequestError(
                f"{where}: {what} failed: {failed}", param=(None, "resume")
            ) from box["error"]
        raise box["error"]
    return box.get("value")


_TS_BOUNDED = False


def bound_tensorstore_retries() -> None:
    """Gives tensorstore's GCS requests under orbax a retry schedule that ends within
    deadline_s() (tensorstore's own: 32 tries up to 32 s apart), through the `gcs_request_retries`
    resource of the context orbax builds for every read and write. Orbax has no public setting
    for that context, so its defaults are extended; an orbax without them keeps its own schedule
    and within_deadline still bounds each operation."""
    global _TS_BOUNDED
    if _TS_BOUNDED:
        return
    try:
        # orbax's private module: an orbax without it keeps its own schedule (below)
        from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

        contexts = (ts_utils._BASE_TS_CONTEXT, ts_utils._DEFAULT_OCDBT_TS_CONTEXT)
    except (ImportError, AttributeError):
        return
    limit = deadline_s()
    initial, cap = min(1.0, limit / 8), min(32.0, max(limit / 4, 0.1))
    delays, delay = [], initial
    while sum(delays) + delay <= limit:
        delays.append(delay)
        delay = min(delay * 2, cap)
    retries = {
        "max_retries": max(len(delays), 1),
        "initial_delay": f"{initial:g}s",
        "max_delay": f"{cap:g}s",
    }
    for context in contexts:
        context["gcs_request_retries"] = retries

    # orbax logs each failed background write with its traceback at ERROR (several per lost
    # save) before the named error: debug detail, as gcsfs's retries
    logging.getLogger("absl").addFilter(_OrbaxStorageLogsAtDebug())
    _TS_BOUNDED = True


class _OrbaxStorageLogsAtDebug(_RetryLogsAtDebug):
    """Orbax's (absl's logger) records of a failed storage request become DEBUG records;
    its other records pass unchanged."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (exc is not None and storage_failure(exc)) or _TENSORSTORE_GAVE_UP.search(
            record.getMessage()
        ):
            return super().filter(record)
        return True


@contextlib.contextmanager
def reported_as(local: AnyPath, remote: AnyPath):
    """Named errors (TinywaveError) raised in the block name `remote`, the user's path, where
    they named `local`, the local copy read in its place (a mirror or download in TMPDIR)."""
    try:
        yield
    except TinywaveError as e:
        text, here = str(e), str(local).rstrip("/")
        if here not in text or str(remote) == here:
            raise
        try:
            renamed = type(e)(text.replace(here, str(remote).rstrip("/")))
        except Exception:  # a constructor that takes other arguments: keep the original
            raise e from None
        raise renamed from e
