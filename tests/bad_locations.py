"""The bad-input table's rows for values that name a file, a folder or a URL (issue 23). Most
are what tests/test_fuzz_config.py met when it followed values that validation accepted on to
the command's first real work (a traceback, minutes of MLflow retrying, a read that never
ends, /dev/null replaced by a data file); validation now refuses them before any work, or the
work refuses them in one paragraph."""

from __future__ import annotations

from tests.bad_files import fifo, hf_export, link
from tests.bad_table import Case, write

NO_DEMO = "data=tsv data.synthetic_examples=null"
LONG = "n" * 300
LATIN1_CHAT = '[{"role": "user", "content": "caf\xe9"}]'.encode("latin-1")

LOCATIONS: dict[str, Case] = {
    # -- the tracking store -------------------------------------------------------------------
    "a tracking URI MLflow cannot open": Case(
        "logger.tracking_uri=garbage",
        r"logger.tracking_uri='garbage' is not allowed: a tracking URI MLflow opens: sqlite:////",
    ),
    "MLflow's file store without its opt-in": Case(
        "logger.tracking_uri=file://{tmp}/mlruns",
        r"a database or server: .*only with MLFLOW_ALLOW_FILE_STORE=true in the environment",
    ),
    "an MLFLOW_ALLOW_FILE_STORE that MLflow cannot read": Case(
        "", r"MLFLOW_ALLOW_FILE_STORE='yes' is not allowed: true, false, 1 or 0",
        env={"MLFLOW_ALLOW_FILE_STORE": "yes"},
    ),
    "a file store where a file is": Case(
        "logger.tracking_uri=file://{tmp}/a_file", r"a folder you can write in \(.*a_file is a file",
        write("a_file", ""), env={"MLFLOW_ALLOW_FILE_STORE": "true"},
    ),
    "a SQLite URI in a folder that does not exist": Case(
        "logger.tracking_uri=sqlite:///tmp-typo/mlflow.db",
        r"tmp-typo does not exist; after sqlite:/// a path is relative .* sqlite:////tmp-typo/",
    ),
    "a SQLite URI naming a file that is not a database": Case(
        "logger.tracking_uri=sqlite:///{tmp}/notes.db",
        r"a SQLite file \(.*notes.db is some other file\)",
        write("notes.db", "not a database\n"),
    ),
    "a SQLite URI naming a folder": Case(
        "logger.tracking_uri=sqlite:///{tmp}", r"a SQLite file \(.* is a folder\)"
    ),
    "a tracking server URL that urllib cannot read": Case(
        'logger.tracking_uri="http://[::1"', r"an http:// or https:// URL with a host.*IPv6"
    ),
    "a database whose driver is not installed": Case(
        "logger.tracking_uri=postgresql://user@127.0.0.1:1/db",
        r"tracking store postgresql://127.0.0.1:1/db needs a database driver",
    ),
    "an experiment name longer than a folder name": Case(
        f"logger.experiment_name={LONG}",
        r"logger.experiment_name='n+' is not allowed: .*over 255 bytes",
    ),
    "an experiment name longer than MLflow allows": Case(
        "logger.experiment_name=" + "/".join(["n" * 200] * 3),
        r"at most 500 characters \(MLflow's limit for an experiment name\)",
    ),
    "a registered model name MLflow refuses": Case(
        "logger.register_as=..spam", r"logger.register_as='..spam' is not allowed: a name that"
    ),
    "a registry alias MLflow reserves": Case(
        "logger.register_as=spam logger.alias=latest",
        r"logger.alias='latest' is not allowed: an alias other than latest or v<number>",
    ),
    # -- files and folders --------------------------------------------------------------------
    "an output folder that is a link to nothing": Case(
        "paths.outputs={tmp}/gone", r"a folder you can write in \(a symbolic link to nothing\)",
        link("gone", "nowhere"),
    ),
    "an export folder that is a file": Case(
        "export.dir={tmp}/a_file",
        r"export.dir='.*a_file' is not allowed: a folder you can write in \(.*a_file is a file\)",
        write("a_file", ""),
    ),
    "a data file name over 255 bytes": Case(
        f"{NO_DEMO} data.path={{tmp}}/{LONG}.tsv", r"data.path='.*' is not allowed: .*255 bytes"
    ),
    "generated data where a folder is": Case(
        "data.path={tmp}", r"data.path='.*' is not allowed: an existing file \(this is a folder\)"
    ),
    "generated data where a pipe or device is": Case(
        "data.path={tmp}/pipe", r"an existing file \(this is a device, pipe or socket\)",
        fifo("pipe"),
    ),
    "generated data whose name leaves no room for its temporary file": Case(
        "data.path={tmp}/" + "n" * 250 + ".tsv", r"a file name of at most 241 bytes"
    ),
    "a conversation file that is a pipe": Case(
        "ckpt={tmp} messages={tmp}/pipe", r"messages='.*pipe' is not allowed: .*pipe or socket",
        fifo("pipe"), command="generate",
    ),
    "resume through a symbolic link loop": Case(
        "resume={tmp}/loop", r"resume='.*loop' is not allowed: .*Too many levels of symbolic",
        link("loop", "loop"),
    ),
    "a conversation file that is not UTF-8": Case(
        "ckpt={tmp}/export/hf messages={tmp}/chat.json",
        r"chat.json, line 1, is not UTF-8 text \(byte 0xe9",
        lambda tmp: (hf_export(tmp), write("chat.json", LATIN1_CHAT)(tmp)),
        command="generate",
    ),
}  # fmt: skip
