"""The one training loop's pieces: timm's parameter groups, the teacher's replay of the student's
augmentation, and the loop's own configuration checks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgevit.compress.loop import Batch, LoopConfig, param_groups, to_model_input  # noqa: E402
from edgevit.errors import ConfigError  # noqa: E402
from edgevit.models import create_model, get_spec  # noqa: E402


def _no_decay_names(model) -> set[str]:
    ids = {id(p) for g in param_groups(model, 0.05) if g["weight_decay"] == 0 for p in g["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_swin_relative_position_bias_tables_get_no_weight_decay():
    model = create_model("swin_tiny_patch4_window7_224")
    skipped = _no_decay_names(model)
    tables = {n for n, _ in model.named_parameters() if "relative_position_bias_table" in n}
    assert tables and tables <= skipped  # 2-D tables the old name rule decayed
    assert "layers.0.blocks.0.attn.qkv.weight" not in skipped


def test_edgevit_keeps_position_embedding_and_class_token_out_of_weight_decay():
    model = create_model("vit_fmnist_tiny")
    skipped = _no_decay_names(model)
    tokens = {n for n, _ in model.named_parameters() if n in ("pos_embed", "cls_token")}
    assert "pos_embed" in tokens and tokens <= skipped
    assert all(p.ndim <= 1 or n in ("pos_embed", "cls_token") for n, p in model.named_parameters() if n in skipped)
    groups = param_groups(model, 0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[-1]["weight_decay"] == 0.0  # decayed group first


def test_a_teacher_sees_the_students_crop_and_flip():
    spec = get_spec("vit_fmnist_tiny")
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8))
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    student = to_model_input(raw, spec, generator=gen, flip=True, pad=2)
    batch = Batch(raw=raw, labels=torch.zeros(4, dtype=torch.long), rng_state=state, flip=True, pad=2, device="cpu",
                  epoch=0, step=0)
    assert torch.equal(batch.inputs_for(spec), student)


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("augment", "rotate"), ("label_smoothing", 1.0),
                                              ("weight_decay", -1.0), ("threads", 0)])
def test_loop_config_validates_itself(field, value):
    with pytest.raises(ConfigError, match=field):
        LoopConfig(**{field: value})
