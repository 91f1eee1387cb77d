"""What this machine offers for training, and the trainer preset that fits it:

python -m pipeline.doctor
"""

from __future__ import annotations


def report() -> tuple[list[str], str]:
    """Lines describing torch and the devices, and the recommended trainer overrides."""
    import os

    import torch

    lines = [
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
        f"CPU: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads, "
        f"bf16 autocast on CPU: supported",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(
                f"cuda:{i} {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                f"compute capability {props.major}.{props.minor}"
            )
        bf16 = torch.cuda.is_bf16_supported()
        lines.append(f"bf16 on GPU: {'supported' if bf16 else 'not supported (use 16-mixed)'}")
        n = torch.cuda.device_count()
        preset = "trainer=gpu" + ("" if bf16 else " trainer.precision=16-mixed")
        if n > 1:
            preset += f" trainer.devices={n} trainer.strategy=ddp"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines.append("Apple MPS: available")
        preset = "trainer.accelerator=mps"
    else:
        lines.append("GPU: none found")
        preset = "trainer=cpu"
    return lines, preset


def main() -> None:
    lines, preset = report()
    print("\n".join(lines))
    print(f"Recommended: python -m pipeline.train {preset}")


if __name__ == "__main__":
    main()
