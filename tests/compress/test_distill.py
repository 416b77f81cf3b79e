"""Knowledge distillation: the loss against a hand-computed example, DeiT's distillation token, and
a short distillation run on real Fashion-MNIST that must learn (accuracy far above chance)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgevit.compress.distill import (  # noqa: E402
    _loss_for,
    deit_distillation_loss,
    distill,
    distillation_loss,
    has_distillation_token,
)
from edgevit.errors import ConfigError  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def test_loss_matches_the_formula_on_a_hand_computed_example():
    s, t, y, temp, alpha = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], 1, 2.0, 0.25
    # By hand: p_t = softmax(t/T), p_s = softmax(s/T), KL = sum p_t log(p_t / p_s), CE = -log softmax(s)[y].
    p_t, p_s = _softmax([v / temp for v in t]), _softmax([v / temp for v in s])
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    ce = -math.log(_softmax(s)[y])
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    # On paper: t/T = (1, 0, .5) and s/T = (.5, 1, 0) give p_t = (.50648, .18632, .30720) and p_s, its
    # permutation (.30720, .50648, .18632); the log ratios are exactly (.5, -1, .5), so
    # KL = .5 * .50648 - .18632 + .5 * .30720 = .22052; CE = -ln(e^2 / (e + e^2 + 1)) = .40761;
    # L = .25 * 4 * .22052 + .75 * .40761 = .52622.
    assert expected == pytest.approx(0.52622, abs=1e-5)
    got = distillation_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), temperature=temp, alpha=alpha)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_loss_limits_and_gradient():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = torch.nn.functional.cross_entropy(s, y)
    assert float(distillation_loss(s, t, y, 3.0, alpha=0.0)) == pytest.approx(float(ce), abs=1e-6)
    # alpha = 1: T^2 KL only; its gradient w.r.t. the student logits is T (p_s - p_t) / batch.
    temp = 3.0
    s_req = s.clone().requires_grad_(True)
    distillation_loss(s_req, t, y, temp, alpha=1.0).backward()
    expected = temp * ((s / temp).softmax(-1) - (t / temp).softmax(-1)) / len(s)
    assert torch.allclose(s_req.grad, expected, atol=1e-6)
    # A student equal to its teacher has zero soft loss.
    assert float(distillation_loss(t, t, y, temp, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_deit_distillation_token_losses():
    g = torch.Generator().manual_seed(1)
    cls, dist, t = (torch.randn(4, 5, generator=g) for _ in range(3))
    y = torch.randint(0, 5, (4,), generator=g)
    ce = torch.nn.functional.cross_entropy
    hard = deit_distillation_loss(cls, dist, t, y, "hard")
    assert float(hard) == pytest.approx(float(0.5 * ce(cls, y) + 0.5 * ce(dist, t.argmax(-1))), abs=1e-6)
    soft = deit_distillation_loss(cls, dist, t, y, "soft", temperature=2.0, alpha=0.4)
    assert float(soft) == pytest.approx(float(0.6 * ce(cls, y) + distillation_loss(dist, t, y, 2.0, 1.0) * 0.4),
                                        abs=1e-6)
    with pytest.raises(ConfigError):
        deit_distillation_loss(cls, dist, t, y, "medium")
    # A (class, distillation) pair from the student routes the teacher to the distillation head.
    loss, logits = _loss_for((cls, dist), y, t, 2.0, 0.4, "hard", 0.0)
    assert float(loss) == pytest.approx(float(hard), abs=1e-6)
    assert torch.allclose(logits, (cls + dist) / 2)


def test_timm_distilled_deit_is_recognised_and_returns_both_heads():
    from edgevit.models._timm import import_timm

    timm = import_timm()
    from timm.models.deit import VisionTransformerDistilled

    student = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10)
    plain = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                             num_heads=2, num_classes=10)
    assert has_distillation_token(student) and not has_distillation_token(plain)
    student.set_distilled_training(True)
    student.train()
    out = student(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and len(out) == 2 and out[1].shape == (2, 10)
    loss, _ = _loss_for(out, torch.tensor([1, 2]), torch.randn(2, 10), 4.0, 0.5, "hard", 0.0)
    loss.backward()
    assert student.head_dist.weight.grad is not None and student.dist_token.grad is not None


def test_a_teacher_without_weights_is_refused():
    with pytest.raises(ConfigError, match="teacher-weights"):
        distill("vit_fmnist_full", "vit_fmnist_tiny", "digits", epochs=1, out="unused", train_limit=10)


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_distilled_student_learns_real_fashion_mnist(tmp_path, trained_tiny, capsys):
    from edgevit.cli import main

    teacher = trained_tiny
    out = tmp_path / "distill"
    rc = main(["distill", "--teacher", "vit_fmnist_tiny", "--teacher-weights", teacher, "--student", "vit_fmnist_tiny",
               "--data", "fashion-mnist", "--epochs", "1", "--train-limit", "2000", "--test-limit", "500",
               "--batch-size", "32", "--augment", "none",
               "--temperature", "4", "--alpha", "0.7", "--threads", "2", "--out", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    # 10 classes: chance is 10%; one epoch on 2,000 images with the teacher's soft targets must
    # get far beyond it, and the teacher must be a real one.
    assert doc["teacher_top1"] > 0.6
    assert doc["test_top1"] > 0.4
    assert doc["temperature"] == 4.0 and doc["alpha"] == 0.7
    record = json.loads(Path(doc["record"]).read_text())
    assert record["distillation"]["teacher_model"] == "vit_fmnist_tiny"
    assert record["distillation"]["loss"].startswith("alpha * T^2 * KL")
    from safetensors import safe_open

    with safe_open(doc["weights"], "pt") as f:
        assert f.metadata()["model"] == "vit_fmnist_tiny"
    # The weights load back into the catalog model and reproduce the reported accuracy.
    from edgevit.data import load_dataset
    from edgevit.models import create_model
    from edgevit.compress.training import evaluate

    ds = load_dataset("fashion-mnist").subset(10, 500)
    top1, _ = evaluate(create_model("vit_fmnist_tiny", weights=doc["weights"]), ds.test_images, ds.test_labels)
    assert top1 == pytest.approx(doc["test_top1"], abs=1e-9)
    assert (out / "checkpoint.safetensors").is_file()


@pytest.mark.slow
def test_alpha_zero_reproduces_edgevit_train_exactly(tmp_path):
    """With alpha = 0 the teacher has no say: the loop must then be `edgevit train`'s, step for step."""
    from edgevit.models import get_spec
    from edgevit.compress.training import train

    if not get_spec("vit_fmnist_tiny").has_pretrained:
        pytest.skip("needs the shipped vit_fmnist_tiny weights as a teacher")
    kw = dict(epochs=1, batch_size=32, lr=2e-3, seed=5, threads=1, progress=False, train_limit=256, test_limit=100)
    plain = train("vit_fmnist_tiny", "digits", out=tmp_path / "train", **kw)
    distilled = distill("vit_fmnist_tiny", "vit_fmnist_tiny", "digits", teacher_pretrained=True, alpha=0.0,
                        out=tmp_path / "distill", **kw)
    assert distilled.history[0].train_loss == plain.history[0].train_loss
    assert distilled.test_top1 == plain.test_top1
    from edgevit.models.weights import load_state_dict

    a, b = load_state_dict(plain.weights), load_state_dict(distilled.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_after_an_interruption_continues_exactly(tmp_path):
    from edgevit.models import get_spec

    if not get_spec("vit_fmnist_tiny").has_pretrained:
        pytest.skip("needs the shipped vit_fmnist_tiny weights as a teacher")
    kw = dict(teacher_pretrained=True, epochs=2, batch_size=32, seed=2, threads=1, progress=False, train_limit=128,
              test_limit=64, temperature=3.0, alpha=0.6)
    whole = distill("vit_fmnist_tiny", "vit_fmnist_tiny", "digits", out=tmp_path / "whole", **kw)

    def stop(record):
        if record.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill("vit_fmnist_tiny", "vit_fmnist_tiny", "digits", out=tmp_path / "cut", on_epoch_end=stop, **kw)
    with pytest.raises(ConfigError, match="distillation settings"):
        distill("vit_fmnist_tiny", "vit_fmnist_tiny", "digits", out=tmp_path / "cut", resume=True,
                **{**kw, "alpha": 0.5})
    resumed = distill("vit_fmnist_tiny", "vit_fmnist_tiny", "digits", out=tmp_path / "cut", resume=True, **kw)
    assert resumed.resumed_from_epoch == 1
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in whole.history]
    from edgevit.models.weights import load_state_dict

    a, b = load_state_dict(whole.weights), load_state_dict(resumed.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)
