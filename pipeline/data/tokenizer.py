"""Byte-level BPE tokenization with the `tokenizers` library: trained on the training split, or
loaded from a model directory (`tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from pipeline.errors import UserError
from pipeline.files import write_json, write_text

EOS = "<|endoftext|>"
PAD = "<|pad|>"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the two ids the pipeline needs: end of text and padding.

    The tokens default to GPT-2's; a model directory's tokenizer_config.json names its own
    (Llama 3's <|end_of_text|>, for example).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        eos: str = EOS,
        pad: str | None = None,
        config_files: dict[str, str] | None = None,
    ):
        self.tokenizer = tokenizer
        # A pretrained tokenizer's own tokenizer_config.json / special_tokens_map.json (chat
        # template, BOS handling...), written back verbatim on export.
        self.config_files = config_files or {}
        eos_id = tokenizer.token_to_id(eos)
        if eos_id is None:
            raise UserError(
                f"The tokenizer has no {eos!r} token, which marks the end of a text. "
                "Use a tokenizer that has one (name it as eos_token in tokenizer_config.json "
                "beside tokenizer.json), or let the pipeline train one (data.tokenizer.path=null)."
            )
        self.eos_id = eos_id
        self.eos, self.pad = eos, pad or PAD
        # Many pretrained tokenizers have no padding token; padding is masked out, so EOS serves.
        pad_id = tokenizer.token_to_id(self.pad)
        self.pad_id = eos_id if pad_id is None else pad_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def to_json(self) -> str:
        """The tokenizer and its special tokens, as one string (stored in checkpoints)."""
        return json.dumps(
            {
                "tokenizer": self.tokenizer.to_str(),
                "eos": self.eos,
                "pad": self.pad,
                "config_files": self.config_files,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        data = json.loads(text)
        return cls(
            Tokenizer.from_str(data["tokenizer"]), data["eos"], data["pad"], data["config_files"]
        )

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        min_frequency: int,
        special: Sequence[str] = (),
    ) -> TextTokenizer:
        """A byte-level BPE learned from `texts`, with GPT-2's end-of-text and a padding token,
        and `special` tokens (a chat template's) that are never split."""
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS, PAD, *special],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """A tokenizer.json file, or a directory with tokenizer.json or vocab.json + merges.txt."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        eos, pad = _special_tokens(folder)
        files = {
            name: _read_utf8(folder / name) for name in CONFIG_FILES if (folder / name).is_file()
        }
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                bpe = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
                tokenizer = Tokenizer(bpe)
                tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                tokenizer.decoder = decoders.ByteLevel()
                return cls(tokenizer, eos, pad, files)
            else:
                raise UserError(
                    f"No tokenizer in {path}: expected tokenizer.json, or vocab.json with "
                    "merges.txt (GPT-2's layout). Point data.tokenizer.path at one of them, or "
                    "set it to null to train a tokenizer on your data."
                )
        if not path.is_file():
            raise UserError(f"Tokenizer file {path} does not exist. Check data.tokenizer.path.")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise UserError(
                f"{path} is not a readable tokenizer.json ({exc}). Point data.tokenizer.path "
                "at a file saved by the `tokenizers` library or by transformers."
            ) from None
        return cls(tokenizer, eos, pad, files)

    @property
    def config(self) -> dict:
        """tokenizer_config.json: the pretrained tokenizer's own, else one for transformers'
        PreTrainedTokenizerFast with our special tokens."""
        if "tokenizer_config.json" in self.config_files:
            return json.loads(self.config_files["tokenizer_config.json"])
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **self._special_map(),
            "model_max_length": None,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
        }

    @property
    def chat_template(self) -> str | None:
        return self.config.get("chat_template")

    def with_chat_template(self, template: str, end_of_turn: str) -> TextTokenizer:
        """This tokenizer for a chat model: the template it was trained with, saved with it
        (exports and generation format prompts as training did), and the end-of-turn token as
        its end of text, where generation stops."""
        config = {**self.config, "chat_template": template, "eos_token": end_of_turn}
        files = {**self.config_files, "tokenizer_config.json": json.dumps(config, indent=2)}
        return TextTokenizer(self.tokenizer, end_of_turn, self.pad, files)

    def _special_map(self) -> dict[str, str]:
        eos, pad = self.eos, self.tokenizer.id_to_token(self.pad_id)
        return {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": pad}

    def save(self, directory: str | Path) -> None:
        """tokenizer.json plus the small files transformers' AutoTokenizer reads beside it."""
        directory = Path(directory)
        write_text(directory / "tokenizer.json", self.tokenizer.to_str())
        if self.config_files:
            for name, text in self.config_files.items():
                write_text(directory / name, text)
            return
        write_json(directory / "tokenizer_config.json", self.config)
        write_json(directory / "special_tokens_map.json", self._special_map())


def has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file()


def _special_tokens(directory: Path) -> tuple[str, str | None]:
    """The end-of-text and padding tokens a model directory declares, else GPT-2's."""
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return EOS, None
    try:
        data = json.loads(_read_utf8(config))
    except json.JSONDecodeError:
        return EOS, None
    if not isinstance(data, dict):
        return EOS, None

    def token(value: object) -> str | None:
        # Either a plain string or transformers' {"content": ...} form.
        return value.get("content") if isinstance(value, dict) else value  # type: ignore[return-value]

    return token(data.get("eos_token")) or EOS, token(data.get("pad_token"))


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); the tokenizer's files are damaged. Export or download them again."
        ) from None
