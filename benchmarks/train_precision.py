"""Distillation step time in fp32 and under bf16 autocast, side by side (convert --mixed-precision).

usage: .venv/bin/python benchmarks/train_precision.py [--layers 6] [--batch 32] [--length 24] [--rounds 6]

A BERT encoder shaped like all-MiniLM-L6-v2 (hidden 384, 12 heads, intermediate 1536, pruned
vocabulary of 4,300 tokens) with mean pooling and a 77-way head, one AdamW step per batch: the
work `edgekit convert` repeats for every distillation batch. Rounds alternate fp32 and bf16 so
that a noisy machine hurts both alike; prints ms per step and the ratio. Whether the CPU
multiplies bf16 in hardware (AVX-512 BF16 / AMX) decides the outcome: see `bf16_is_fast`.
"""

from __future__ import annotations

import statistics
import time

import click


@click.command()
@click.option("--layers", type=click.IntRange(1, 24), default=6, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=32, show_default=True)
@click.option("--length", type=click.IntRange(2, 512), default=24, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=6, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=5, show_default=True, help="Steps timed per round.")
def main(layers: int, batch: int, length: int, rounds: int, steps: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    from edgekit.converters.training.loop import bf16_is_fast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=4300, hidden_size=384, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=1536)
    encoder, head = BertModel(config), torch.nn.Linear(384, 77)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-4)
    ids = torch.randint(0, 4300, (batch, length))
    mask = torch.ones_like(ids)
    y = torch.randint(0, 77, (batch,))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            loss = torch.nn.functional.cross_entropy(head(pooled).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds + 1):  # round 0 warms up both
        for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name == "bf16")
            if r:
                times[name].append((time.perf_counter() - t0) / steps * 1000)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    click.echo(f"bf16 in hardware: {bf16_is_fast()}; torch threads {torch.get_num_threads()}; "
               f"{layers} layers, batch {batch} x {length} tokens, median of {rounds} rounds x {steps} steps")
    click.echo(f"fp32 {fp32:.0f} ms/step, bf16 autocast {bf16:.0f} ms/step: bf16 is {fp32 / bf16:.2f}x as fast")


if __name__ == "__main__":
    main()
