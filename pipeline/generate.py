"""Continue a prompt with a trained causal LM (or classify it with a trained classifier):

python -m pipeline.generate ckpt=<run folder|.ckpt|export dir> prompt="Hey Sam," max_new_tokens=30
"""

from __future__ import annotations

from pipeline.cli.app import hydra_command
from pipeline.config.commands import GenerateConfig
from pipeline.errors import UserError


@hydra_command("generate")
def main(cfg: GenerateConfig) -> str:
    import torch

    from pipeline.assembly.restore import load_trained
    from pipeline.data.chat import chat_prompt
    from pipeline.model.heads import label_probabilities

    trained = load_trained(cfg.ckpt)
    if trained.tokenizer is None:
        raise UserError(f"{cfg.ckpt} has no tokenizer, so a text prompt cannot be encoded.")
    model, tokenizer = trained.model.eval(), trained.tokenizer
    has_template = tokenizer.chat_template is not None
    chat = bool(cfg.messages) or (has_template if cfg.chat is None else cfg.chat)
    prompt = chat_prompt(tokenizer, _messages(cfg)) if chat and model.is_lm else cfg.prompt
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    input_ids = torch.tensor([ids[-model.context_length :]])
    if not model.is_lm:
        with torch.no_grad():
            pooled = model.pooled(model(input_ids), torch.tensor([input_ids.shape[1]]))
        probs = label_probabilities(pooled[0])
        names = trained.label_names or [str(i) for i in range(len(probs))]
        ranked = sorted(zip(names, probs.tolist(), strict=True), key=lambda x: -x[1])
        text = ", ".join(f"{name} {p:.3f}" for name, p in ranked)
        print(f"This checkpoint is a classifier, so it labels the prompt instead: {text}")
        return ranked[0][0]
    generator = torch.Generator().manual_seed(cfg.seed)
    out = model.generate(
        input_ids,
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        eos_id=tokenizer.eos_id,
        generator=generator,
    )
    text = tokenizer.decode(out[0].tolist()[len(ids) :] if chat else out[0].tolist())
    print(text)
    return text


def _messages(cfg: GenerateConfig) -> list[dict[str, str]]:
    """The conversation to answer: messages= (checked as training data is), else prompt=."""
    if not cfg.messages:
        return [{"role": "user", "content": cfg.prompt}]
    import json
    from pathlib import Path

    from pipeline.data.instruct import check_turns
    from pipeline.data.parsing import read_text

    path = Path(cfg.messages).expanduser()
    try:
        turns = json.loads(read_text(path))  # another encoding is refused naming its line
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"messages={path} could not be read as JSON ({exc}).") from None
    return check_turns(turns, f"messages={path}")


if __name__ == "__main__":
    main()
