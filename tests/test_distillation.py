"""Distillation: the teacher is taken before the first compression event, the KL term reaches the gradients, the
teacher survives a resume, and a fit without a compression callback is refused before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_compress as lc
from tests.helpers.models import CrashAtEpoch, loaders, mlp, ordered_loaders, trainer_kwargs


def _module() -> lc.ImageClassifier:
    torch.manual_seed(0)
    return lc.ImageClassifier(mlp(), num_classes=4)


def test_teacher_is_taken_at_the_first_compression_window(tmp_path: Path) -> None:
    distill = lc.Distillation()
    surp = lc.SuccessivePruning(target_sparsity=0.8, start=0.5)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[distill, surp]))  # type: ignore[arg-type]
    trainer.fit(_module(), *ordered_loaders())
    assert distill.taken_at == round(0.5 * trainer.global_step)  # SuccessivePruning's window starts half-way
    assert trainer.callback_metrics["distill/kl"] > 0
    assert distill.teacher is None  # a model's worth of memory, released at the end of the fit


def test_teacher_weights_are_frozen_and_equal_the_model_when_taken(tmp_path: Path) -> None:
    distill = lc.Distillation(start=0.5)
    seen: dict[str, Any] = {}

    class Check(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            if distill.teacher is not None and "teacher" not in seen:
                seen["teacher"] = {k: v.clone() for k, v in distill.teacher.state_dict().items()}
                seen["step"] = trainer.global_step

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            assert distill.teacher is not None
            seen["end"] = {k: v.clone() for k, v in distill.teacher.state_dict().items()}
            seen["grads"] = [p.requires_grad for p in distill.teacher.parameters()]

    module = _module()
    pre: dict[int, dict[str, torch.Tensor]] = {}

    class Before(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            pre[trainer.global_step] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}  # type: ignore[union-attr]

    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[Before(), distill, Check()]))  # type: ignore[arg-type]
    trainer.fit(module, *loaders())
    taken = distill.taken_at
    assert taken == round(0.5 * trainer.global_step)
    assert all(torch.equal(seen["teacher"][k], pre[taken][k]) for k in pre[taken])  # the model after step taken-1
    assert all(torch.equal(seen["teacher"][k], seen["end"][k]) for k in seen["end"])  # never trained
    assert not any(seen["grads"])
    assert not any(torch.equal(seen["end"][k], module.backbone.state_dict()[k]) for k in seen["end"])


def test_term_reaches_the_gradients(tmp_path: Path) -> None:
    # with a teacher that disagrees with the labels, the gradients of one step differ from the plain loss's
    teacher = mlp()
    grads: dict[str, list[torch.Tensor]] = {}

    class Grab(pl.Callback):
        def __init__(self, key: str) -> None:
            self.key = key

        def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            grads.setdefault(self.key, [p.grad.clone() for p in pl_module.parameters() if p.grad is not None])

    for key, extra in (("plain", []), ("distilled", [lc.Distillation(teacher=teacher, weight=2.0)])):
        trainer = pl.Trainer(**trainer_kwargs(tmp_path / key, max_steps=1, callbacks=[*extra, Grab(key)]))  # type: ignore[arg-type]
        trainer.fit(_module(), *ordered_loaders())
    assert not all(torch.equal(a, b) for a, b in zip(grads["plain"], grads["distilled"], strict=True))


def test_refused_before_training_without_a_compression_callback(tmp_path: Path) -> None:
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[lc.Distillation()]))  # type: ignore[arg-type]
    module = _module()
    with pytest.raises(ValueError, match=r"`teacher=`.*`start=`"):
        trainer.fit(module, *loaders())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"temperature": 0}, "temperature"),
        ({"weight": -1.0}, "weight"),
        ({"start": 1.5}, "start"),
        ({"teacher": "resnet"}, "teacher"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        lc.Distillation(**kwargs)


def test_resume_keeps_the_teacher(tmp_path: Path) -> None:
    # a fit resumed after the teacher was taken distils from that teacher (from the checkpoint), not from the model
    # at the resume point: it ends with the uninterrupted fit's weights
    def fit(root: Path, crash: bool = False, ckpt: str | None = None) -> tuple[lc.Distillation, dict[str, Any]]:
        distill = lc.Distillation(start=0.25)
        saver = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
        callbacks: list[pl.Callback] = [distill, saver, *([CrashAtEpoch(2)] if crash else [])]
        trainer = pl.Trainer(**trainer_kwargs(root, max_epochs=3, callbacks=callbacks, enable_checkpointing=True))  # type: ignore[arg-type]
        torch.manual_seed(0)
        module = _module()
        trainer.fit(module, *ordered_loaders(), ckpt_path=ckpt)
        return distill, module.state_dict()

    full, full_weights = fit(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "part", crash=True)
    ckpt = sorted((tmp_path / "part" / "ckpt").glob("*.ckpt"))[-1]
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    (saved,) = [v for k, v in state.items() if "Distillation" in k]
    assert "teacher" in saved
    resumed, resumed_weights = fit(tmp_path / "resumed", ckpt=str(ckpt))
    assert resumed.taken_at == full.taken_at
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)


def test_teacher_from_an_artifact(tmp_path: Path) -> None:
    from lightning_compress.models import build_model

    dense = build_model("lenet_300_100", in_shape=[16], num_classes=4, hidden=[8, 8])
    path = lc.save(dense, tmp_path / "dense.lcz")
    distill = lc.Distillation(teacher=str(path))
    assert distill.teacher is not None
    assert not distill.teacher.training
    x = torch.randn(3, 16)
    assert torch.equal(distill.teacher(x), dense.eval()(x))
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[distill]))  # type: ignore[arg-type]
    trainer.fit(_module(), *loaders())
    assert trainer.callback_metrics["distill/kl"] > 0
    with pytest.raises(ValueError, match=r"`teacher`: no artifact file"):
        lc.Distillation(teacher=str(tmp_path / "missing.lcz"))
