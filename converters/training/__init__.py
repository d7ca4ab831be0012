"""Training: the cloud model (``edgekit finetune``) and the edge student (``edgekit convert``'s first stage).

- :mod:`.loop` — the training loop both use, on Hugging Face Accelerate (batching by length,
  schedule, early stopping, bf16 autocast);
- :mod:`.finetune` — a pretrained encoder → the fine-tuned classifier (the cloud model);
- :mod:`.student` — the student the converter exports: :mod:`.distill` (start probed, knowledge
  distillation), :mod:`.probe` (the linear probe that warm-starts every head),
  :mod:`.pretrained` (encoders shipped in PyPI packages), :mod:`.vocab` (vocabulary pruning),
  :mod:`.teacher_cache` (the teacher's outputs, cached on disk).

Conversion proper (export, quantize, measure, calibrate, gate) is the rest of
:mod:`edgekit.converters`. Nothing is imported here: each module imports torch when it runs.
"""
