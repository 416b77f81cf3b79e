"""ExecuTorch integrity digest found by position, and the outputs-vs-labels check at load.

The ``.pte`` digest slot is the string that the ``edgevit_sha256`` constant method returns; it is
located by walking the program flatbuffer (``pte_digest_slot``), not by searching the file for the
marker text ``edgevit-sha256:``, so a label holding that text exports and verifies. Every byte
outside the 64 digest characters is covered, so a flip anywhere (header, tables, labels, weights,
the digest itself) is refused. Tiny programs (a 2-block, 16-wide ``test_vit``) keep this quick.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("executorch", reason="ExecuTorch is not installed (pip install 'edgevit[executorch]')")

from edgevit.converters import export  # noqa: E402  (before timm: torchvision compatibility step)
from edgevit.errors import ArtifactError  # noqa: E402
from edgevit.runtimes import load  # noqa: E402
from edgevit.runtimes.executorch import DIGEST_METHOD, check_pte, pte_digest_slot  # noqa: E402
from edgevit.runtimes.integrity import DIGEST_HEX, DIGEST_PREFIX, digest_at, find_digest, seal, seal_at  # noqa: E402

MARKER = DIGEST_PREFIX.decode("ascii")
# The marker alone, with a placeholder's zeros, and with 64 hex characters: all just label text.
LABELS = ["plain", MARKER, MARKER + "0" * DIGEST_HEX, "x " + MARKER + "a" * DIGEST_HEX]
REFUSED = "corrupt|damaged|truncated|not an ExecuTorch program|no edgevit integrity digest"


def _tiny_vit(num_classes: int):
    import timm

    return timm.create_model(
        "test_vit", num_classes=num_classes, img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
        dynamic_img_size=False,
    ).eval()


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A tiny ViT exported with labels that hold the digest marker (export verifies it)."""
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("et-digest") / "marker.pte"
    return export(_tiny_vit(len(LABELS)), target="executorch", input_size=32, mean=[0.5] * 3, std=[0.5] * 3,
                  labels=LABELS, out=out)


def _write(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_label_holding_the_marker_exports_and_verifies(art):
    assert art.verification.passed
    data = art.path.read_bytes()
    assert data.count(DIGEST_PREFIX) == 1 + 3  # the digest method's string and three labels
    rt = load(art.path)
    assert rt.integrity == "verified"
    assert list(rt.metadata.labels) == LABELS
    assert rt.run(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, len(LABELS))


def test_slot_is_the_string_the_digest_method_returns(art):
    """The parser's slot is what ExecuTorch itself reads as the method's value, and it is sealed."""
    data = art.path.read_bytes()
    at = pte_digest_slot(data, "marker.pte")
    rt = load(art.path)
    value = rt._program.load_method(DIGEST_METHOD)([])[0]
    assert value == MARKER + data[at : at + DIGEST_HEX].decode("ascii")
    assert data[at : at + DIGEST_HEX].decode("ascii") == digest_at(data, at)
    markers = [m.start() + len(DIGEST_PREFIX) for m in re.finditer(re.escape(DIGEST_PREFIX), data)]
    assert at in markers and len(markers) == 4  # the three labels' markers are just text


def test_program_sealed_by_the_previous_version_still_verifies(art, tmp_path):
    """edgevit before this fix sealed the one marker it found by searching; the program layout is
    unchanged, so such a file (labels without the marker) verifies, at the same slot."""
    data = art.path.read_bytes()
    start = data.index(b'"labels":')
    end = data.index(b"]", start)
    # Same length, so nothing moves; then sealed the old way (the search finds the one marker left).
    labels = data[start:end].replace(DIGEST_PREFIX, b"edgevit_sha256;")
    old = seal(data[:start] + labels + data[end:])
    assert old.count(DIGEST_PREFIX) == 1
    assert pte_digest_slot(old) == find_digest(old, "old", "")[0]
    p = _write(tmp_path, "old.pte", old)
    rt = load(p)
    assert rt.integrity == "verified" and rt.metadata.labels[1] == "edgevit_sha256;"


def test_a_flipped_byte_anywhere_is_refused(art, tmp_path):
    """One bit flipped at every byte of the program flatbuffer (header, tables, metadata and its
    labels, the digest method's name, prefix and hex) and at a stride through the segments after
    it (weights, XNNPACK blobs): all refused before ExecuTorch parses anything."""
    data = bytearray(art.path.read_bytes())
    program_size = int.from_bytes(data[16:24], "little")
    assert data[8:12] == b"eh00" and 0 < program_size < len(data)
    at = pte_digest_slot(data)
    positions = [*range(program_size), *range(program_size, len(data), 7), len(data) - 1]
    labels_at = bytes(data).index(b'"labels":')
    assert labels_at < program_size and at < program_size
    accepted = []
    for pos in positions:
        bit = 1 << (pos % 8)
        data[pos] ^= bit
        try:
            check_pte(data, "flipped.pte")
        except ArtifactError as exc:
            assert re.search(REFUSED, str(exc)), str(exc)
        else:
            accepted.append(pos)
        finally:
            data[pos] ^= bit
    assert accepted == [], f"flips accepted at {accepted[:10]}"
    check_pte(bytes(data), "restored.pte")  # the loop restored every byte
    # The runtime refuses them too (a few named places: weights, a label's marker, the digest).
    marker_in_label = bytes(data).index(DIGEST_PREFIX) + 3
    for name, pos in {"weights": len(data) - 100, "label": marker_in_label, "digest": at + 5,
                      "prefix": at - 2, "header": 10}.items():
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        with pytest.raises(ArtifactError, match=REFUSED):
            load(_write(tmp_path, f"{name}.pte", bytes(flipped)))


def test_damaged_tables_are_refused_not_misread(art):
    """Offsets that point outside the program, a truncated file, extra bytes: ArtifactError, never
    an IndexError or struct.error from the parser."""
    data = art.path.read_bytes()
    program_size = int.from_bytes(data[16:24], "little")
    rng = np.random.default_rng(0)
    cases = [data[:-1], data + b"\0", data[:program_size], b"\xff\xff\xff\xff" + data[4:]]
    for pos in rng.integers(0, program_size - 4, size=300):
        damaged = bytearray(data)
        damaged[int(pos) : int(pos) + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\0\0\0\0", b"\xf0\xff\xff\xff"])
        cases.append(bytes(damaged))
    for case in cases:
        with pytest.raises(ArtifactError, match=REFUSED):
            check_pte(case, "damaged.pte")


def test_label_count_differing_from_outputs_is_refused_at_load(art, tmp_path):
    """Labels edited to a different count (the file re-sealed, as anyone can): refused at load."""
    data = art.path.read_bytes()
    old = b'"plain","edgevit-sha256:"'
    new = b'"plain, edgevit-sha256:" '  # same length: 3 labels instead of 4, nothing else moves
    assert len(old) == len(new) and data.count(old) == 1
    edited = data.replace(old, new)
    resealed = seal_at(edited, pte_digest_slot(edited))
    check_pte(resealed, "edited.pte")  # the digest is fine: the check at load is what refuses it
    with pytest.raises(ArtifactError, match="4 class scores but its metadata has 3 labels"):
        load(_write(tmp_path, "edited.pte", resealed))


def test_output_that_is_not_a_vector_of_class_scores_is_refused_at_load(art, tmp_path):
    """A program the converter lowers, whose output is (1, 3, 1): not one score per label."""
    import torch

    from edgevit.converters.executorch import lower

    class NotScores(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)).reshape(1, 3, 1)

    meta = load(art.path).metadata.replace(labels=["a", "b", "c"])
    data, _ = lower(NotScores().eval(), torch.zeros(1, 3, 32, 32), meta)
    check_pte(data, "not-scores.pte")
    with pytest.raises(ArtifactError, match=r"output has shape \(1, 3, 1\), not a vector of class scores"):
        load(_write(tmp_path, "not-scores.pte", data))
