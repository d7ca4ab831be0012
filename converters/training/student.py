"""The student stage of ``edgekit convert``: probe the starts, prune the vocabulary, distil.

The recipe itself lives in :mod:`edgekit.converters.training.distill`; this module feeds it the
pipeline's data and teacher (:class:`edgekit.converters.pipeline.Run`) and reports each step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.config import ConvertConfig

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.converters.pipeline import Run

__all__ = ["distill_config", "make_student"]


def distill_config(config: ConvertConfig, max_length: int):
    from edgekit.converters.training.distill import DistillConfig
    from edgekit.converters.training.loop import resolve_mixed_precision

    student = config.student
    if student is not None and str(student) == "teacher-layers":
        student = None
    return DistillConfig(
        student=student, layers=config.student_layers, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, head_learning_rate=config.head_learning_rate,
        temperature=config.distill_temperature, alpha=config.alpha, calibrate_teacher=config.calibrate_teacher,
        hidden_weight=config.hidden_weight, augment=config.augment, max_length=max_length, seed=config.seed,
        progress=config.progress, mixed_precision=resolve_mixed_precision(config.mixed_precision),
    )


def _transfer_set(run: Run, y_train):
    """Training texts (labelled) + KD-only copies and unlabelled texts, with the teacher's outputs."""
    from edgekit.converters.training.distill import TransferSet, transfer_texts

    config, data = run.config, run.data
    texts, targets = transfer_texts(data.train.texts, y_train.tolist(), augment_copies=config.augment,
                                    unlabeled=list(data.unlabeled.texts) if data.unlabeled else [], seed=config.seed)
    with run.timer.stage("teacher scoring (transfer set)") as note:
        scored = run.teacher_logits(texts, note, pooled=config.hidden_weight > 0)
    return TransferSet(texts, targets, scored.logits, scored.pooled)


def _choose(run: Run, y_train, dconfig):
    from edgekit.converters.training.distill import choose_start, student_candidates

    data = run.data
    with run.timer.stage("student start (probes)"):
        run.echo("probing student starts (frozen encoder + linear probe) ...")
        candidates = student_candidates(dconfig, run.teacher.model, run.teacher.tokenizer, data.labels)
        start = choose_start(candidates, data.train.texts, y_train, data.val.texts, data.y_val,
                             max_length=data.max_length, echo=run.echo)
    run.echo(f"student start: {start.chosen.name} ({start.reason})")
    return start


def make_student(run: Run) -> tuple[Path, dict[str, Any]]:
    """Choose the start (probes), prune its vocabulary, distil; save the student into ``run.work``."""
    from edgekit.converters.calibrate import fit_temperature
    from edgekit.converters.training.distill import distill
    from edgekit.converters.evaluate import label_ids

    config, data = run.config, run.data
    dconfig = distill_config(config, data.max_length)
    y_train = label_ids(data.train, data.labels)
    transfer = _transfer_set(run, y_train)
    teacher_t = fit_temperature(run.teacher.val_logits, data.y_val) if config.calibrate_teacher else 1.0
    run.echo(f"transfer set: {len(transfer.texts)} texts ({len(data.train)} labelled); teacher temperature on "
             f"validation {teacher_t:.3f}{' (used to scale its targets)' if config.calibrate_teacher else ''}")
    start = _choose(run, y_train, dconfig)
    chosen = start.chosen
    info = {"source": chosen.name, "teacher_layers": chosen.layers if chosen.name.startswith("teacher") else None,
            "layers": chosen.layers, "pooling": chosen.model.pooling, "probed": start.probed,
            "choice_reason": start.reason, "probe_validation_accuracy": chosen.probe_accuracy,
            "teacher_temperature": teacher_t}
    model, tokenizer = chosen.model, chosen.tokenizer
    if config.prune_vocab is not False:
        with run.timer.stage("vocabulary pruning"):
            model, tokenizer, info["vocab_pruning"] = _prune(run, model, tokenizer, transfer.texts)
    with run.timer.stage("distillation"):
        run.echo("distilling the student ...")
        result = distill(model, tokenizer, transfer, data.val.texts, data.y_val, dconfig, teacher_temperature=teacher_t)
    info.update(parameters=sum(p.numel() for p in result.model.parameters()),
                validation_accuracy=result.validation_accuracy, best_epoch=result.best_epoch,
                epochs_planned=result.epochs_planned, history=result.history)
    run.echo(f"student: {info['parameters'] / 1e6:.1f}M parameters, validation accuracy "
             f"{result.validation_accuracy:.4f} (best epoch {result.best_epoch} of "
             f"{sum(1 for h in result.history if h['epoch'])} run, {result.epochs_planned} planned; epoch 0 is "
             f"the frozen start with its probe head, {chosen.probe_accuracy:.4f})")
    student_dir = run.work / "student"
    result.model.save_pretrained(student_dir, safe_serialization=True)
    result.tokenizer.save_pretrained(student_dir)
    return student_dir, info


# Pruning keeps the tokens of the transfer set; a word it never saw is then split into other
# pieces than the full vocabulary would give. Validation is held out of the pruning corpus, so
# the agreement measured on it is what unseen text will see; below this, the vocabulary stays whole.
PRUNE_MIN_AGREEMENT = 0.99


def _prune(run: Run, model, tokenizer, transfer_texts):
    """Prune the start's vocabulary to the transfer set before training, if held-out answers stay the same.

    ``--prune-vocab`` prunes regardless, ``--no-prune-vocab`` never; by default (None) the pruned
    start must agree with the unpruned one on at least PRUNE_MIN_AGREEMENT of the validation texts,
    which are not part of the pruning corpus.
    """
    from edgekit.converters.training.loop import predict_logits
    from edgekit.converters.training.vocab import prune_vocabulary
    from transformers import AutoTokenizer

    val, max_length, forced = run.data.val, run.data.max_length, run.config.prune_vocab
    before = predict_logits(model, tokenizer, val.texts, max_length=max_length).argmax(-1)
    whole = (model.get_input_embeddings(), model.config.vocab_size, model.config.pad_token_id)
    pruned_dir = run.work / "student-pruned"
    pruned = prune_vocabulary(model, tokenizer, list(transfer_texts), pruned_dir)
    pruned_tokenizer = AutoTokenizer.from_pretrained(pruned_dir, use_fast=True)
    after = predict_logits(model, pruned_tokenizer, val.texts, max_length=max_length).argmax(-1)
    agreement = float((after == before).mean())
    applied = forced is True or agreement >= PRUNE_MIN_AGREEMENT
    info = {"tokens_before": pruned.old_size, "tokens_after": pruned.new_size, "bytes_saved_fp32": pruned.bytes_saved,
            "agreement_with_unpruned": agreement, "applied": applied,
            "rule": "forced (--prune-vocab)" if forced else f"held-out agreement >= {PRUNE_MIN_AGREEMENT}"}
    if applied:
        run.echo(f"vocabulary pruned {pruned.old_size} → {pruned.new_size} tokens ({pruned.bytes_saved / 1e6:.1f} MB "
                 f"fp32 saved); on validation, held out of the pruning corpus, it agrees {agreement:.4f} with the "
                 "whole vocabulary")
        return model, pruned_tokenizer, info
    model.set_input_embeddings(whole[0])
    model.config.vocab_size, model.config.pad_token_id = whole[1], whole[2]
    run.echo(f"vocabulary kept whole ({pruned.old_size} tokens): pruning to the {pruned.new_size} tokens of the "
             f"transfer set changed {1 - agreement:.1%} of the answers on validation texts it had not seen "
             f"(--prune-vocab forces it)")
    return model, tokenizer, info
