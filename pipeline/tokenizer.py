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


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the two ids the pipeline needs: end of text and padding."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        eos = tokenizer.token_to_id(EOS)
        if eos is None:
            raise UserError(
                f"The tokenizer has no {EOS!r} token, which marks the end of a text. "
                "Use a GPT-2 style byte-level BPE tokenizer, or let the pipeline train one "
                "(data.tokenizer.path=null)."
            )
        self.eos_id = eos
        # GPT-2's own tokenizer has no padding token; padding is masked out, so EOS serves.
        pad = tokenizer.token_to_id(PAD)
        self.pad_id = eos if pad is None else pad

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
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        return cls(Tokenizer.from_str(text))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int) -> TextTokenizer:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS, PAD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """A tokenizer.json file, or a directory with tokenizer.json or vocab.json + merges.txt."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                bpe = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
                tokenizer = Tokenizer(bpe)
                tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                tokenizer.decoder = decoders.ByteLevel()
                return cls(tokenizer)
            else:
                raise UserError(
                    f"No tokenizer in {path}: expected tokenizer.json, or vocab.json with "
                    "merges.txt (GPT-2's layout). Point data.tokenizer.path at one of them, or "
                    "set it to null to train a tokenizer on your data."
                )
        if not path.is_file():
            raise UserError(f"Tokenizer file {path} does not exist. Check data.tokenizer.path.")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise UserError(
                f"{path} is not a readable tokenizer.json ({exc}). Point data.tokenizer.path "
                "at a file saved by the `tokenizers` library or by transformers."
            ) from None

    def save(self, directory: str | Path) -> None:
        """tokenizer.json plus the small files transformers' AutoTokenizer reads beside it."""
        directory = Path(directory)
        write_text(directory / "tokenizer.json", self.to_json())
        pad = self.tokenizer.id_to_token(self.pad_id)
        write_json(
            directory / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": EOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": pad,
                "model_max_length": None,
                "add_prefix_space": False,
                "clean_up_tokenization_spaces": False,
            },
        )
        write_text(
            directory / "special_tokens_map.json",
            json.dumps(
                {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad},
                indent=2,
            ),
        )
