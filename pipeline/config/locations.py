"""Values that name a file, a folder or a URL, checked when they are given and before any work:
the system can look the path up, the file or folder is there (or a folder can be made and
written in), and a URI has a scheme and a host that the library behind it opens. Each check
raises ValueError saying what is allowed, which becomes a Config error naming the key: through
pydantic for the field types at the end, through `checked` in the groups' check(). Only the
standard library and pydantic: a config error never waits for torch or MLflow.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from pipeline.config.base import LocalPath, fail

# The longest name of one file or folder on Linux and macOS file systems, in bytes. A longer
# name is refused only when a library first opens it, with a traceback.
NAME_MAX = 255
# atomic_write (pipeline/files.py) writes `.<name>.<8 random characters>.tmp` beside a file.
_TEMPORARY_NAME_EXTRA = len("..12345678.tmp")
STORES = (
    "sqlite:////absolute/path/mlflow.db, http(s)://host:port, or a database such as "
    "postgresql://user@host/db"
)
DATABASES = ("postgresql", "mysql", "mssql")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _nameable(path: str, allowed: str) -> None:
    """A path the system can look up at all: Path.exists() and open() raise for any other,
    where a missing file was expected."""
    if not path:
        raise ValueError(f"{allowed} (an empty path names no file)")
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        raise ValueError(f"{allowed} (this path holds characters no file name can)") from None
    if b"\0" in encoded:
        raise ValueError(f"{allowed} (a path cannot hold a NUL byte)")
    if any(len(name) > NAME_MAX for name in encoded.split(b"/")):
        raise ValueError(f"{allowed} (a name in this path is over {NAME_MAX} bytes)")


def _stat(path: str, allowed: str) -> os.stat_result | None:
    """What is at `path`; None: nothing."""
    _nameable(path, allowed)
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):  # a link to nothing: no file, but no folder can be made there
            raise ValueError(f"{allowed} (a symbolic link to nothing)") from None
        return None
    except OSError as exc:
        raise ValueError(f"{allowed} ({exc.strerror})") from None


def _readable(path: str, found: os.stat_result, allowed: str) -> None:
    # Reading a pipe or a device waits forever or returns nothing a reader can use.
    if not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):
        raise ValueError(f"{allowed} (this is a device, pipe or socket)")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{allowed} (Permission denied)")


def check_file(path: str) -> str:
    """A file the command reads (data.path, messages=)."""
    allowed = "an existing file"
    found = _stat(path, allowed)
    if found is None:
        raise ValueError(f"{allowed} (no such file)")
    if stat.S_ISDIR(found.st_mode):
        raise ValueError(f"{allowed} (this is a folder)")
    _readable(path, found, allowed)
    return path


def check_data_file(path: str) -> str:
    """One entry of data.path (val_path, test_path): a file, a folder that datasets'
    save_to_disk wrote, or a glob that matches at least one file."""
    allowed = "an existing file, a save_to_disk folder, or a glob that matches one"
    if set("*?[") & set(path):
        _nameable(path, allowed)
        if not glob.glob(path, recursive=True):
            raise ValueError(f"{allowed} (this pattern matches nothing)")
        return path
    found = _stat(path, allowed)
    if found is None:
        raise ValueError(f"{allowed} (no such file)")
    _readable(path, found, allowed)
    return path


def check_file_or_folder(path: str) -> str:
    """Weights, a checkpoint or a tokenizer: a file, or a folder that holds them."""
    allowed = "an existing directory or file"
    found = _stat(path, allowed)
    if found is None:
        raise ValueError(f"{allowed} (not found)")
    _readable(path, found, allowed)
    return path


def check_folder(path: str) -> str:
    """A folder the command writes in (paths.outputs, export.dir): there, or made under the
    nearest folder on the way that is there, which must let us write."""
    allowed = "a folder you can write in"
    folder = Path(os.path.abspath(path))
    found = _stat(path, allowed)
    while found is None:
        folder = folder.parent
        found = _stat(str(folder), allowed)
    if not stat.S_ISDIR(found.st_mode):
        raise ValueError(f"{allowed} ({folder} is a file)")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"{allowed} ({exc.strerror})") from None
    return path


def check_written_file(path: str) -> str:
    """A file the command writes unless it is there (data.path with data.synthetic_examples)."""
    if _stat(path, "an existing file or one to write") is not None:
        return check_file(path)
    if len(os.fsencode(Path(path).name)) > NAME_MAX - _TEMPORARY_NAME_EXTRA:
        limit = NAME_MAX - _TEMPORARY_NAME_EXTRA
        raise ValueError(f"a file name of at most {limit} bytes (it is written under a longer one)")
    check_folder(str(Path(path).parent))
    return path


def check_path_text(text: str) -> str:
    """A value that may name a file (resume=): a path the system can look up, if anything."""
    _stat(text, "a run folder, a .ckpt, a run id or auto")
    return text


def check_folder_name(name: str) -> str:
    """logger.experiment_name: the MLflow experiment, and the folder of its runs under
    <paths.outputs>/runs/ and of its artifacts under <paths.outputs>/mlartifacts/."""
    allowed = "a name that stays a folder under runs/ (no leading /, no . or .. part)"
    if not name:
        raise ValueError("at least 1 character")
    if name.startswith("/") or {".", ".."} & set(name.split("/")):
        raise ValueError(allowed)
    if len(name) > 500:
        raise ValueError("at most 500 characters (MLflow's limit for an experiment name)")
    _nameable(name, "a name the system can make a folder of")
    return name


def check_url(url: str) -> str:
    """An http(s) endpoint (judge.url, a tracking server): a host, and a port if any."""
    allowed = "an http:// or https:// URL with a host, such as http://127.0.0.1:5000"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (urllib checks the port only when it is read)
    except ValueError as exc:
        raise ValueError(f"{allowed} ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(allowed)
    return url


def check_tracking_uri(uri: str, file_store_allowed: bool | None) -> str:
    """logger.tracking_uri as MLflow opens it; a SQLite file's relative path made absolute (it
    is relative to the folder the command ran in, and the run records where its store is).
    `file_store_allowed`: whether MLFLOW_ALLOW_FILE_STORE opts into MLflow's file store, which
    MLflow 3 refuses otherwise; None where no command read it (a resume's merged settings,
    whose logger the command line gave and validation checked already)."""
    engine = store_engine(uri)
    if engine == "sqlite":
        return _sqlite(uri)
    if engine in ("http", "https"):
        return check_url(uri)
    if engine in DATABASES:
        return uri  # the driver and the connection: when the store is opened
    if engine == "file":
        return _file_store(uri, file_store_allowed)
    opt_in = "" if file_store_allowed is False else ", or file:///absolute/folder"
    raise ValueError(f"a tracking URI MLflow opens: {STORES}{opt_in}")


def store_engine(uri: str) -> str:
    """What opens the store at `uri`: its scheme without a driver (postgresql+psycopg ->
    postgresql), lower case; '' without a scheme."""
    scheme = uri.partition(":")[0].lower() if ":" in uri else ""
    return scheme.partition("+")[0]


def _sqlite(uri: str) -> str:
    head, sep, rest = uri.partition(":///")
    path, mark, query = rest.partition("?")
    if not sep or path in ("", ":memory:"):
        raise ValueError(
            "a SQLite file, sqlite:////absolute/path/mlflow.db (sqlite:// alone keeps the "
            "runs in memory, lost when the command ends)"
        )
    absolute = os.path.abspath(path)
    folder = os.path.dirname(absolute)
    allowed = "a SQLite file in a folder you can write in"
    if _stat(folder, allowed) is None:
        hint = ""
        if not os.path.isabs(path):
            hint = (
                "; after sqlite:/// a path is relative to the current folder, an absolute one "
                f"takes four slashes: sqlite:////{path}"
            )
        raise ValueError(f"{allowed} ({folder} does not exist{hint})")
    check_folder(folder)
    found = _stat(absolute, allowed)
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            raise ValueError(f"a SQLite file ({absolute} is a folder)")
        _readable(absolute, found, "a SQLite file")
        with open(absolute, "rb") as file:
            start = file.read(len(_SQLITE_MAGIC))
        if start not in (b"", _SQLITE_MAGIC):
            raise ValueError(f"a SQLite file ({absolute} is some other file)")
    return f"{head}:///{absolute}{mark}{query}"


def _file_store(uri: str, file_store_allowed: bool | None) -> str:
    if file_store_allowed is False:
        raise ValueError(
            f"a database or server: {STORES} (MLflow 3 opens a file store only with "
            "MLFLOW_ALLOW_FILE_STORE=true in the environment)"
        )
    parts = urllib.parse.urlsplit(uri)
    path = urllib.parse.unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path.startswith("/"):
        raise ValueError("a file store on this machine: file:///absolute/folder")
    check_folder(path)
    return uri


def public(uri: str) -> str:
    """`uri` without the credentials in it, to show in a message (even one urllib refuses)."""
    return re.sub(r"^([A-Za-z][\w+.-]*://)[^/]*@", r"\1", uri)


def checked(key: str, value: str, check: Callable[[str], str]) -> str:
    """`check(value)`, refused as a Config error that names `key`."""
    try:
        return check(value)
    except ValueError as exc:
        raise fail(key, value, str(exc)) from None


# The schema's path fields, recorded absolute (base.LocalPath) once checked.
ReadFile = Annotated[LocalPath, AfterValidator(check_file)]
ReadPath = Annotated[LocalPath, AfterValidator(check_file_or_folder)]
WriteFolder = Annotated[LocalPath, AfterValidator(check_folder)]
