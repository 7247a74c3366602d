"""Model identity by content: two adapters with the same shapes and different values are two revisions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rcsd.client.protocol import RubricRequest
from rcsd.services.engines.base import EngineConfig
from rcsd.services.engines.hf import HfEngine
from rcsd.services.engines.identity import CACHE_FILE, UnresolvedRevision, folder_fingerprint, model_revision
from rcsd.services.rubric.store import request_key

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RCSD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_adapter(base: Path, target: Path, seed: int) -> Path:
    """A LoRA adapter of the same shapes for every seed; only the values differ."""
    import peft
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(model, lora).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_model_dir, folder / "a", 1), make_adapter(tiny_model_dir, folder / "b", 2)


def test_same_shapes_different_values_are_different_revisions(tiny_model_dir, adapters, cache_dir, tmp_path):
    first, second = adapters
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())
    assert [p.stat().st_size for p in sorted(first.iterdir())] == [
        p.stat().st_size for p in sorted(second.iterdir())
    ]
    base = str(tiny_model_dir)
    revisions = {model_revision(base, None, str(a)) for a in adapters}
    assert len(revisions) == 2
    assert all(r.startswith(folder_fingerprint(base) + "+lora:") for r in revisions)
    copy = shutil.copytree(first, tmp_path / "copy")  # the same bytes elsewhere: the same revision
    assert model_revision(base, None, str(copy)) == model_revision(base, None, str(first))


def test_hashes_are_cached_by_path_mtime_and_size(adapters, cache_dir, tmp_path):
    folder = shutil.copytree(adapters[0], tmp_path / "adapter")
    before = folder_fingerprint(str(folder))
    assert (cache_dir / CACHE_FILE).is_file()
    weights = folder / "adapter_model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, and the mtime put back: only the cache can still answer
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder_fingerprint(str(folder)) == before
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: hashed again
    assert folder_fingerprint(str(folder)) != before


def test_hub_ids_need_a_concrete_commit(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert model_revision("org/model", COMMIT) == COMMIT
    with pytest.raises(UnresolvedRevision, match="pass --revision"):
        model_revision("org/model", None)  # not cached, and the Hub cannot be asked
    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda self, repo, revision: SimpleNamespace(sha="f" * 40)
    )
    assert model_revision("org/model", "main") == "f" * 40  # resolved by the Hub
    repo = tmp_path / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text("{}")
    assert model_revision("org/model", None) == COMMIT  # resolved offline from the local cache
    assert model_revision("org/model", "main") == COMMIT


async def test_served_adapters_share_no_rubric_store_entries(tiny_model_dir, adapters, cache_dir):
    request = RubricRequest(question="Why is the sky blue?")
    keys, revisions = set(), set()
    for adapter in adapters:
        engine = await HfEngine.load(
            EngineConfig(model=str(tiny_model_dir), adapter=str(adapter), device="cpu")
        )
        try:
            info = engine.info
        finally:
            await engine.aclose()
        revisions.add(info.revision)
        keys.add(request_key(request, model=info.name, model_revision=info.revision, template_version="v2"))
    assert len(revisions) == 2 and len(keys) == 2
