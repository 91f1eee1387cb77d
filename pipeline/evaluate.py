"""Evaluate a trained model on a data split:

    python -m pipeline.evaluate ckpt=<run folder|.ckpt|export dir> [split=test] [data=... data.path=...]

Without data overrides on the command line, the data settings recorded in the checkpoint are
used (same file, same seed, so the same split); the tokenizer and labels always come from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cli.app import hydra_command
from pipeline.config.commands import EvaluateConfig


@hydra_command("evaluate")
def main(cfg: EvaluateConfig) -> dict[str, float]:
    if cfg.judge.url:
        from pipeline.run.judge import check_judge

        check_judge(cfg.judge.url)  # before torch loads and minutes of generating
    from hydra.core.hydra_config import HydraConfig

    from pipeline.build.restore import load_trained
    from pipeline.files import write_json
    from pipeline.run.evaluation import data_config, evaluate

    trained = load_trained(cfg.ckpt)
    hydra_cfg = HydraConfig.get()
    data, seed = data_config(cfg, trained.config, list(hydra_cfg.overrides.task))
    metrics = evaluate(trained, data, seed, cfg.split, cfg)
    folder = Path(hydra_cfg.runtime.output_dir)
    if data.task == "instruct":
        from pipeline.data.records import load_splits
        from pipeline.files import write_text
        from pipeline.run.answers import answer_all, scores

        conversations = load_splits(data, seed)[cfg.split].conversations
        rows = answer_all(trained, conversations, cfg.max_new_tokens)
        metrics |= {f"{cfg.split}/{k}": v for k, v in scores(rows).items()}
        if cfg.judge.url:
            from pipeline.run.judge import judge_all

            judged = judge_all(rows, cfg.judge.url, cfg.judge.model, cfg.judge.timeout_s)
            metrics |= {f"{cfg.split}/{k}": v for k, v in judged.items()}
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        print(f"answers written to {write_text(folder / 'responses.jsonl', lines)}")
    for key, value in metrics.items():
        print(f"{key:>16}: {value:.4f}")
    out = write_json(
        folder / "metrics.json",
        {"ckpt": str(Path(cfg.ckpt).resolve()), "data": data.path, "metrics": metrics},
    )
    print(f"written to {out}")
    return metrics


if __name__ == "__main__":
    main()
