"""Checkpoint loading: every format, metadata, key mapping, alignment, and every bad input the issue names."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save, save_state_dict

from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import (
    check_aligned,
    find_checkpoints,
    load_checkpoint,
    save_safetensors,
)
from yolo_audit.model.freeze import declared_layers as frozen_layers
from yolo_audit.model.keys import describe_keys, infer_module_types


def test_ultralytics_final_and_epoch_layouts(model, tmp_path):
    final = load_checkpoint(save(model, tmp_path / "exp" / "weights" / "last.pt", freeze=10, name="exp"))
    epoch = load_checkpoint(
        save(model, tmp_path / "exp" / "weights" / "epoch3.pt", freeze=10, name="exp", epoch=3, key="ema")
    )
    for ckpt in (final, epoch):
        assert ckpt.source_format == "ultralytics" and ckpt.precision == "float16"
        assert ckpt.run == "exp" and ckpt.train_args["freeze"] == 10
        assert ckpt.declared_frozen == frozenset(range(10))
        assert all(t.dtype == torch.float32 for t in ckpt.tensors.values())
        assert ckpt.module_types[22] == "Detect" and ckpt.module_types[2] == "C2f" and ckpt.module_types[9] == "SPPF"
        assert ckpt.bn_eps["model.0.bn"] == pytest.approx(1e-3)
    # Ultralytics stores the 0-based index of the epoch just finished (epoch3.pt: the 4th); we count epochs completed
    assert final.epoch is None and epoch.epoch == 4
    # byte-different files (another layout, other metadata) holding identical tensors: one checkpoint
    assert final.sha256 != epoch.sha256 and final.checkpoint_id == epoch.checkpoint_id
    sd = model.state_dict()
    assert set(final.tensors) == set(sd)  # parameters and buffers
    name = "model.4.m.0.cv1.bn.running_var"
    np.testing.assert_array_equal(final.tensors[name].numpy(), sd[name].half().float().numpy())
    assert final.n_params == sum(p.numel() for p in model.parameters())


def test_state_dict_and_safetensors_roundtrip(model, tmp_path):
    sd_ckpt = load_checkpoint(save_state_dict(model, tmp_path / "r1" / "epoch7.pt"))
    assert sd_ckpt.source_format == "state_dict" and sd_ckpt.precision == "float32"
    assert sd_ckpt.epoch == 7 and sd_ckpt.run == "r1" and sd_ckpt.declared_frozen is None
    assert sd_ckpt.module_types[22] == "Detect" and sd_ckpt.module_types[0] == "Conv"
    ultra = load_checkpoint(save(model, tmp_path / "u.pt", freeze=[0, 1], name="u", epoch=2, key="ema"))
    st = load_checkpoint(save_safetensors(ultra, tmp_path / "u.safetensors"))
    assert st.source_format == "safetensors" and st.precision == "float16"
    assert st.run == "u" and st.epoch == 3 and st.declared_frozen == frozenset({0, 1})  # index 2: 3 epochs done
    assert st.checkpoint_id == ultra.checkpoint_id  # the exact fp32 conversion holds the same values
    assert st.module_types == ultra.module_types and st.bn_eps == ultra.bn_eps
    assert st.arch_hash == ultra.arch_hash
    assert all(torch.equal(st.tensors[k], ultra.tensors[k]) for k in ultra.tensors)


def test_checkpoint_id_follows_content(model, tmp_path):
    a = save_state_dict(model, tmp_path / "a.pt")
    b = tmp_path / "copy" / "b.pt"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    assert load_checkpoint(a).checkpoint_id == load_checkpoint(b).checkpoint_id
    with torch.no_grad():
        model.model[0].conv.weight[0, 0, 0, 0] += 1
    assert load_checkpoint(save_state_dict(model, tmp_path / "c.pt")).checkpoint_id != load_checkpoint(a).checkpoint_id


def test_roles_layers_and_module_types(model, tmp_path):
    ckpt = load_checkpoint(save(model, tmp_path / "x.pt"))
    keys = ckpt.keys
    assert keys["model.0.conv.weight"].role == "conv_weight" and keys["model.0.conv.weight"].layer == 0
    assert keys["model.0.bn.weight"].role == "bn_weight" and keys["model.0.bn.bias"].role == "bn_bias"
    assert keys["model.0.bn.running_mean"].role == "bn_running_mean"
    assert keys["model.0.bn.running_var"].role == "bn_running_var"
    assert keys["model.0.bn.num_batches_tracked"].role == "other"
    assert keys["model.22.cv2.0.2.bias"].role == "conv_bias" and keys["model.22.cv2.0.2.bias"].module_type == "Detect"
    assert keys["model.2.m.0.cv1.conv.weight"].module == "model.2.m.0.cv1.conv"
    assert keys["model.2.m.0.cv1.conv.weight"].module_type == "C2f"
    inferred = infer_module_types(ckpt.tensors)  # what a bare state dict gets: must agree with the classes
    assert len(inferred) == 17 and inferred == {k: v for k, v in ckpt.module_types.items() if k in inferred}
    plain = describe_keys({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, {})
    assert plain["fc.weight"].role == "conv_weight" and plain["fc.bias"].role == "conv_bias"
    assert plain["fc.weight"].layer is None


def test_frozen_layers_semantics():
    assert frozen_layers(10) == list(range(10))
    assert frozen_layers([3, 1, 1]) == [1, 3]
    assert frozen_layers(None) == [] and frozen_layers(False) == [] and frozen_layers(0) == []


def test_alignment_names_missing_unexpected_and_mismatched_keys(model, tmp_path):
    ref = load_checkpoint(save_state_dict(model, tmp_path / "ref.pt"))
    sd = dict(model.state_dict())
    sd.pop("model.0.conv.weight")
    sd["model.99.extra.weight"] = torch.zeros(2, 2)
    sd["model.1.conv.weight"] = torch.zeros(1, 1, 1, 1)
    other = tmp_path / "other.pt"
    torch.save(sd, other)
    with pytest.raises(AuditError) as err:
        check_aligned(ref, load_checkpoint(other))
    text = str(err.value)
    assert "1 missing (model.0.conv.weight)" in text and "1 unexpected (model.99.extra.weight)" in text
    assert "1 shape-mismatched (model.1.conv.weight (1, 1, 1, 1) vs" in text and str(other) in text


def test_yolov8s_vs_yolov8n_is_refused_with_counts(model, tmp_path):
    from yolo_audit.model.synthetic import build_model

    n = load_checkpoint(save_state_dict(model, tmp_path / "n.pt"))
    s = load_checkpoint(save_state_dict(build_model("yolov8s.yaml"), tmp_path / "s.pt"))
    with pytest.raises(AuditError, match=r"\d+ shape-mismatched .*, \.\.\.\)"):
        check_aligned(n, s)


def test_find_checkpoints_recurses_and_rejects_missing_and_empty(tmp_path, model):
    save_state_dict(model, tmp_path / "a" / "b" / "x.pt")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    assert [Path(p).name for p in find_checkpoints([tmp_path / "a"])] == ["x.pt"]
    with pytest.raises(AuditError, match="no such file"):
        find_checkpoints([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditError, match=r"no \*\.pt or \*\.safetensors"):
        find_checkpoints([tmp_path / "empty"])


class Evil:
    """Unpickling this would create a file: the safe loader must refuse it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def _bad_files(tmp_path: Path, model) -> dict[str, Path]:
    good = save_state_dict(model, tmp_path / "good.pt")
    files = {
        "empty": tmp_path / "empty.pt",
        "truncated": tmp_path / "truncated.pt",
        "random": tmp_path / "random.pt",
        "list": tmp_path / "list.pt",
        "bad_safetensors": tmp_path / "bad.safetensors",
        "wrong_suffix": tmp_path / "weights.bin",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save([1, 2, 3], files["list"])
    files["bad_safetensors"].write_bytes(b"\xff" * 8 + b"{not json")
    files["wrong_suffix"].write_bytes(b"x")
    return files


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "empty"),
        ("truncated", "truncated or corrupted"),
        ("random", "truncated or corrupted"),
        ("list", "holds no model weights"),
        ("bad_safetensors", "not a readable safetensors"),
        ("wrong_suffix", "expected a .pt or .safetensors"),
    ],
)
def test_bad_inputs_give_one_clear_line_naming_the_file(kind, message, tmp_path, model):
    path = _bad_files(tmp_path, model)[kind]
    with pytest.raises(AuditError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint whose unpickling would create `marker`, and the marker's path."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": Evil(str(marker))}, path)
    return path, marker


def test_code_running_pickle_is_refused_unless_trusted(tmp_path):
    path, marker = _evil(tmp_path)
    with pytest.raises(AuditError, match="--trust-pickle"):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(AuditError):  # trusted: the code runs (that is the risk), then no weights are found
        load_checkpoint(path, trust_pickle=True)
    assert marker.exists()


def test_fast_restricted_unpickler_builds_what_torch_weights_only_builds_and_never_runs_foreign_code(model, tmp_path):
    from ultralytics.nn.tasks import torch_safe_load

    from yolo_audit.model.checkpoint import _from_object
    from yolo_audit.model.unpickle import NotAllowed, StandIn, fast_load, named_modules, state_dict

    path = save(model, tmp_path / "b" / "epoch1.pt", freeze=3, name="b", epoch=1, key="ema")
    fast = fast_load(path)  # module classes become stand-ins: nothing of Ultralytics' runs (nor is it imported)
    slow, _ = torch_safe_load(str(path), safe_only=True)  # torch's weights_only path, Ultralytics' classes allowed
    assert isinstance(fast["ema"], StandIn) and not isinstance(fast["ema"], torch.nn.Module)
    assert type(fast["ema"]).__name__ == type(slow["ema"]).__name__ and fast["train_args"] == slow["train_args"]
    a, b = state_dict(fast["ema"]), slow["ema"].state_dict()
    assert list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    names = [(n, type(m).__name__) for n, m in named_modules(fast["ema"])]
    assert names == [(n, type(m).__name__) for n, m in slow["ema"].named_modules()]
    got, want = _from_object(fast, path, "sha"), _from_object(slow, path, "sha")
    assert (got.module_types, got.bn_eps, got.model_yaml, got.epoch, got.run, got.precision) == (
        want.module_types, want.bn_eps, want.model_yaml, want.epoch, want.run, want.precision)  # fmt: skip
    assert len(got.bn_eps) > 50 and got.module_types[22] == "Detect"
    assert list(got.tensors) == list(want.tensors) and all(
        torch.equal(got.tensors[k], want.tensors[k]) for k in got.tensors
    )
    # views into one storage, shared storages, other dtypes, nesting: the same objects torch builds
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    odd = {"view": base[1:, 2:], "t": base.t(), "same": base, "bf16": base.to(torch.bfloat16), "ints": torch.arange(5),
           "nested": [base[0], {"k": torch.ones(2, dtype=torch.float16)}],
           "param": torch.nn.Parameter(base[2])}  # fmt: skip
    torch.save(odd, tmp_path / "odd.pt")
    got, want = fast_load(tmp_path / "odd.pt"), torch.load(tmp_path / "odd.pt", weights_only=True)
    for key in ("view", "t", "same", "bf16", "ints", "param"):
        assert got[key].dtype == want[key].dtype and got[key].stride() == want[key].stride()
        assert torch.equal(got[key], want[key]) and type(got[key]) is type(want[key])
    assert got["view"].untyped_storage().data_ptr() == got["same"].untyped_storage().data_ptr()  # one storage
    assert torch.equal(got["nested"][1]["k"], want["nested"][1]["k"]) and torch.equal(got["nested"][0], base[0])
    evil, marker = _evil(tmp_path)
    with pytest.raises(NotAllowed, match="getattr|pathlib"):
        fast_load(evil)
    assert not marker.exists()


def test_zip_that_is_not_a_torch_archive(tmp_path):
    path = tmp_path / "zip.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not torch")
    with pytest.raises(AuditError, match=str(path)):
        load_checkpoint(path)


def test_plain_pickle_not_zip(tmp_path):
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(AuditError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_prefetched_file_hashes_are_computed_once_and_follow_changes(tmp_path, monkeypatch):
    """`weights` hashes its files in a background thread while torch is imported: each file once (a load finds the
    digest), the digest is the file's sha256, and a rewritten file is hashed again."""
    import hashlib
    import os

    from yolo_audit.model import filehash

    folder = tmp_path / "runs" / "weights"
    folder.mkdir(parents=True)
    paths = []
    for i in range(3):
        path = folder / f"epoch{i}.pt"
        path.write_bytes(os.urandom(300_000 + i))
        paths.append(path)
    (folder / "notes.txt").write_text("not a checkpoint")
    (folder / ".epoch9.pt.tmp.pt").write_bytes(b"a hidden partial write: find_checkpoints skips it, so does this")
    calls: list[str] = []
    digest = filehash._digest
    monkeypatch.setattr(filehash, "_digest", lambda p: calls.append(p.name) or digest(p))
    filehash.prefetch([str(tmp_path / "runs"), str(paths[0]), "s3://bucket/remote.pt"]).join(timeout=60)
    assert sorted(calls) == [
        "epoch0.pt",
        "epoch1.pt",
        "epoch2.pt",
    ]  # searched; hidden, repeats, URIs skipped
    for path in paths:
        assert filehash.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(calls) == 3
    paths[1].write_bytes(b"rewritten")
    os.utime(paths[1], ns=(1, 1))
    assert filehash.file_sha256(paths[1]) == hashlib.sha256(b"rewritten").hexdigest()
    assert calls[-1] == "epoch1.pt" and len(calls) == 4
