"""The model store: pulls from a loopback Hugging Face hub (tests/fixtures/fake_hub.py, no real hub is reached),
imports of local files, versions, gc that keeps what an inference config names, and one-line errors."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
from collections import namedtuple

import pytest
from huggingface_hub import constants

from models import hub, importer
from models import store as ms
from models.store import ModelManifest, ModelRef, ModelStore, default_name
from onedotzero.errors import UserError
from tests.fixtures.fake_hub import serve

REPO_ID = "test/tiny-GGUF"
GGUF = "tiny.Q4_K_M.gguf"


def _files() -> dict[str, bytes]:
    return {GGUF: b"GGUF" + os.urandom(1_500_000), "config.json": b'{"model_type": "llama"}\n',
            "tokenizer.json": os.urandom(200_000), "README.md": b"# tiny\n", ".gitattributes": b"*.gguf filter=lfs\n"}


@pytest.fixture(autouse=True)
def hf_env(monkeypatch, tmp_path):
    """huggingface_hub as a fresh install would be: no token, online, no telemetry, nothing in the user's home."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))


@pytest.fixture
def fake_hub():
    srv = serve()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def tiny(fake_hub) -> dict[str, bytes]:
    files = _files()
    fake_hub.commit(REPO_ID, files)
    return files


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "cache" / "models")


def _pull(store, fake_hub, repo_id=REPO_ID, **kw):
    return hub.pull(store, repo_id, endpoint=fake_hub.endpoint, **kw)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- pull ---------------------------------------------------------------------------------------------------


def test_pull_publishes_the_resolved_commit_with_every_checksum(store, fake_hub, tiny):
    model = _pull(store, fake_hub)
    m = model.manifest
    assert (m.name, m.format, m.source) == ("test--tiny-gguf", "gguf", f"{fake_hub.endpoint}/{REPO_ID}")
    assert m.revision == fake_hub.repos[REPO_ID].refs["main"] and len(m.revision) == 40
    assert {f.path: f.sha256 for f in m.files} == {p: _sha(d) for p, d in tiny.items() if p != ".gitattributes"}
    for f in m.files:
        assert (model.files / f.path).read_bytes() == tiny[f.path]
    assert m.total_size == sum(len(d) for p, d in tiny.items() if p != ".gitattributes")
    assert store.get(ModelRef.parse("test--tiny-gguf")) == model and str(model.ref) == f"{m.name}@{m.version}"
    assert not (store.root / hub.CACHE / "test--tiny-GGUF").exists()  # the downloads went into the version
    # the LFS file came from the CDN host, with no token sent off the hub
    cdn = [r for r in fake_hub.downloads() if r.path.startswith("/cdn/")]
    assert [r.path for r in cdn] == [f"/cdn/{_sha(tiny[GGUF])}"]


def test_pull_again_downloads_nothing(store, fake_hub, tiny):
    first = _pull(store, fake_hub)
    count = len(fake_hub.downloads())
    assert _pull(store, fake_hub) == first
    assert len(fake_hub.downloads()) == count and store.versions(first.name) == [first]


def test_new_commit_reuses_stored_lfs_files(store, fake_hub, tiny):
    first = _pull(store, fake_hub)
    fake_hub.commit(REPO_ID, {**tiny, "README.md": b"# tiny, now documented\n"})
    fake_hub.requests.clear()
    second = _pull(store, fake_hub)
    assert second.version != first.version and store.versions(first.name) == [first, second]
    assert second.manifest.revision == fake_hub.repos[REPO_ID].refs["main"] != first.manifest.revision
    assert not [r for r in fake_hub.downloads() if r.path.startswith("/cdn/")]  # the GGUF was hard-linked
    assert os.path.samefile(first.files / GGUF, second.files / GGUF)


def test_pull_by_pattern_and_revision(store, fake_hub, tiny):
    old = fake_hub.commit(REPO_ID, tiny, ref="v1")
    fake_hub.commit(REPO_ID, {"other.gguf": b"GGUF" + os.urandom(1000)})
    model = _pull(store, fake_hub, patterns=["*.gguf", "config.*"], revision="v1", name="tiny")
    m = model.manifest
    assert (m.name, m.revision, [f.path for f in m.files]) == ("tiny", old, ["config.json", GGUF])


def test_interrupted_transfer_resumes_where_it_stopped(store, fake_hub, tiny, monkeypatch):
    # huggingface_hub writes what it received in chunks of 10 MiB: smaller ones, so a 1.5 MB file resumes mid-file
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 << 10)
    fake_hub.faults[GGUF] = "drop-once"
    model = _pull(store, fake_hub)
    assert (model.files / GGUF).read_bytes() == tiny[GGUF]
    gets = [r for r in fake_hub.downloads() if r.path.startswith("/cdn/")]
    assert len(gets) == 2 and gets[0].range == ""
    resumed_at = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(tiny[GGUF])


def test_corrupt_file_is_refused_and_nothing_published(store, fake_hub, tiny):
    fake_hub.faults[GGUF] = "corrupt"
    with pytest.raises(UserError, match=rf"^{GGUF}: SHA-256 [0-9a-f]{{64}} does not match the hub's") as e:
        _pull(store, fake_hub)
    assert "\n" not in str(e.value) and "deleted" in str(e.value)
    assert store.all() == [] and not list((store.root / ".staging").iterdir())
    assert not (store.root / hub.CACHE / "test--tiny-GGUF" / GGUF).exists()
    # a corrupt file kept in git is caught by its git blob id
    fake_hub.faults.clear()
    fake_hub.faults["tokenizer.json"] = "corrupt"
    with pytest.raises(UserError, match="tokenizer.json: git blob id"):
        _pull(store, fake_hub)


def test_failed_run_keeps_finished_files_for_the_next(store, fake_hub, tiny):
    fake_hub.faults["tokenizer.json"] = "corrupt"  # the last file in order: config, README, gguf are finished
    with pytest.raises(UserError):
        _pull(store, fake_hub)
    fake_hub.faults.clear()
    fake_hub.requests.clear()
    model = _pull(store, fake_hub)
    assert [r.path for r in fake_hub.downloads()] == [f"/{REPO_ID}/resolve/{model.manifest.revision}/tokenizer.json"]


def test_gated_repository_needs_a_token(store, fake_hub):
    fake_hub.commit("test/gated", _files(), gated=True)
    with pytest.raises(UserError, match=r"^test/gated is gated \(accept its license on .*, then set HF_TOKEN"):
        _pull(store, fake_hub, "test/gated")
    assert store.all() == []
    fake_hub.token = "hf_testtoken"
    fake_hub.requests.clear()
    assert _pull(store, fake_hub, "test/gated", token="hf_testtoken").manifest.format == "gguf"
    assert {r.authorization for r in fake_hub.requests if "/resolve/" in r.path} == {"Bearer hf_testtoken"}
    assert {r.authorization for r in fake_hub.requests if r.path.startswith("/cdn/")} == {""}  # not sent off the hub


@pytest.mark.parametrize("kw,message", [
    ({"repo_id": "test/nope"}, r"^test/nope: no such repository on http://127\.0\.0\.1:\d+, or private \(check the "
                               r"name; for a private one set HF_TOKEN"),
    ({"revision": "v9"}, r"^test/tiny-GGUF has no revision 'v9' \(give a branch, tag or commit"),
    ({"patterns": ["*.safetensors"]}, r"^--file '\*\.safetensors' matches no file of test/tiny-GGUF@main \(\w{12}\) "
                                      r"\(it has: \.gitattributes, README\.md, config\.json, tiny\.Q4_K_M\.gguf"),
    ({"repo_id": "a/b/c"}, r"'a/b/c' is not a repository id"),
])
def test_hub_errors_are_one_line(store, fake_hub, tiny, kw, message):
    with pytest.raises(UserError, match=message) as e:
        _pull(store, fake_hub, **kw)
    assert "\n" not in str(e.value) and store.all() == []


def test_file_missing_on_the_hub(store, fake_hub, tiny):
    fake_hub.faults["tokenizer.json"] = "missing"
    with pytest.raises(UserError, match=r"^test/tiny-GGUF@[0-9a-f]{40}: a listed file is missing on the hub \(Entry"):
        _pull(store, fake_hub)
    assert store.all() == []


def test_unreachable_hub_names_the_offline_way(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(UserError, match=rf"^cannot reach http://127\.0\.0\.1:{port}: connection refused .*"
                                        r"offline sites: `cluster.py models import PATH`"):
        hub.pull(store, REPO_ID, endpoint=f"http://127.0.0.1:{port}")


def test_offline_mode_is_said(store, fake_hub, tiny, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        _pull(store, fake_hub)


def test_not_enough_space_is_refused_before_downloading(store, fake_hub, tiny, monkeypatch):
    monkeypatch.setattr(ms.shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(10 << 30, 0, 1000))
    with pytest.raises(UserError, match=r"^pulling test/tiny-GGUF@main .* needs 1\.6 MiB, 0\.0 MiB free on .*models "
                                        r"\(free space there"):
        _pull(store, fake_hub)
    assert fake_hub.downloads() == [] and store.all() == []


def test_full_disk_is_one_line(store, fake_hub, tiny, monkeypatch):
    def full(src, dest):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "place_file", full)
    with pytest.raises(UserError, match=r"^no space left on .*models \(free space there"):
        _pull(store, fake_hub)


# --- import -------------------------------------------------------------------------------------------------


def test_import_a_file(store, tmp_path):
    f = tmp_path / "Qwen2.5-0.5B-Q4_K_M.gguf"
    f.write_bytes(b"GGUF" + os.urandom(100_000))
    model = importer.import_path(store, f)
    m = model.manifest
    assert (m.name, m.format, m.revision, m.source) == ("qwen2.5-0.5b-q4_k_m", "gguf", "", str(f))
    assert [(x.path, x.size, x.sha256) for x in m.files] == [(f.name, f.stat().st_size, _sha(f.read_bytes()))]
    assert (model.files / f.name).read_bytes() == f.read_bytes()


def test_import_a_directory_twice_is_one_version(store, tmp_path, caplog):
    d = tmp_path / "my-model"
    (d / "sub").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / "config.json").write_text("{}")
    (d / "sub" / "weights.safetensors").write_bytes(os.urandom(300_000))
    (d / ".hidden").write_text("skipped")
    (d / ".git" / "HEAD").write_text("skipped")
    first = importer.import_path(store, d)
    assert (first.name, first.manifest.format) == ("my-model", "hf")
    assert [f.path for f in first.manifest.files] == ["config.json", "sub/weights.safetensors"]
    caplog.set_level("INFO", logger="onedotzero")
    assert importer.import_path(store, d) == first and store.versions("my-model") == [first]
    assert "up to date" in caplog.text
    (d / "config.json").write_text('{"changed": true}')
    second = importer.import_path(store, d)
    assert store.versions("my-model") == [first, second]


def test_pulled_files_imported_again_are_the_same_version(store, fake_hub, tiny, tmp_path):
    pulled = _pull(store, fake_hub, name="tiny")
    copy = tmp_path / "copy"
    shutil.copytree(pulled.files, copy)
    assert importer.import_path(store, copy, name="tiny") == pulled


def test_import_refusals(store, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"does not exist \(give the path of a model file"):
        importer.import_path(store, tmp_path / "missing")
    (tmp_path / "empty" / ".cache").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no files"):
        importer.import_path(store, tmp_path / "empty")
    with pytest.raises(UserError, match="is not a model name"):
        importer.import_path(store, tmp_path, name="Bad Name")
    big = tmp_path / "big.gguf"
    big.write_bytes(os.urandom(3 << 20))
    monkeypatch.setattr(importer, "same_filesystem", lambda a, b: False)  # as if from a USB disk: copied
    monkeypatch.setattr(ms.shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(10 << 30, 0, 1 << 20))
    with pytest.raises(UserError, match=r"^importing .*big\.gguf needs 3\.0 MiB, 1\.0 MiB free on .*models \(free"):
        importer.import_path(store, big)
    assert store.all() == []


# --- the store ----------------------------------------------------------------------------------------------


def _model(store: ModelStore, name: str, content: bytes, when: str):
    """A published version whose name sorts by `when` (versions are named by the time)."""
    with store.staging() as work:
        (work / "files").mkdir()
        (work / "files" / "m.gguf").write_bytes(content)
        files = [ms.ModelFile("m.gguf", len(content), _sha(content))]
        m = ModelManifest.create(name, f"{when}-{ms.content_hash(files)[:8]}", files, "/src")
        m.write(work)
        return store.publish(name, m.version, work)


def test_gc_keeps_the_newest_and_what_is_pinned(store):
    a = [_model(store, "a", bytes([i]), f"2026010{i}T000000Z") for i in range(1, 5)]
    b = [_model(store, "b", bytes([i]), f"2026010{i}T000000Z") for i in range(1, 3)]
    assert store.names() == ["a", "b"] and store.all() == a + b
    removed = store.gc(keep=1, pinned={a[1].ref, ModelRef("b")})  # `b` alone pins its newest, kept anyway
    assert removed == [a[0], a[2], b[0]] and store.versions("a") == [a[1], a[3]] and store.versions("b") == [b[1]]
    assert store.gc(keep=1, pinned=set()) == [a[1]]
    assert not (store.root / ".staging" / f"gc-a-{a[0].version}").exists()
    with pytest.raises(UserError, match="keep at least 1"):
        store.gc(keep=0, pinned=set())


def test_get_names_the_known(store):
    m = _model(store, "a", b"x", "20260101T000000Z")
    with pytest.raises(UserError, match=r"^no model nope in .* \(known models: a; add it with"):
        store.get(ModelRef.parse("nope"))
    with pytest.raises(UserError, match=rf"^no such model a@20270101T000000Z-00000000 \(known a versions: {m.version}"):
        store.get(ModelRef.parse("a@20270101T000000Z-00000000"))
    (store.root / "a" / "20270101T000000Z-11111111").mkdir()
    with pytest.raises(UserError, match="is incomplete"):
        store.get(ModelRef("a", "20270101T000000Z-11111111"))
    with pytest.raises(UserError, match="already exists"), store.staging() as work:
        m.manifest.write(work)
        store.publish("a", m.version, work)


@pytest.mark.parametrize("text,message", [
    ("", "is not a model name"), ("Qwen", "is not a model name"), ("a/b", "is not a model name"),
    ("a@", "no version after '@'"), ("a@latest", "'latest' is not a version"),
])
def test_model_ref_errors(text, message):
    with pytest.raises(UserError, match=message) as e:
        ModelRef.parse(text)
    assert "\n" not in str(e.value)


def test_refs_names_and_manifests_round_trip(tmp_path):
    assert str(ModelRef.parse("qwen@20260101T000000Z-1a2b3c4d")) == "qwen@20260101T000000Z-1a2b3c4d"
    assert ModelRef.parse("qwen") == ModelRef("qwen", None)
    assert default_name("Qwen/Qwen2.5-0.5B-Instruct-GGUF") == "qwen--qwen2.5-0.5b-instruct-gguf"
    with pytest.raises(UserError, match="give --name"):
        default_name("org/" + "x" * 80)
    m = ModelManifest.create("m", "20260101T000000Z-1a2b3c4d", [ms.ModelFile("b.bin", 1, "b" * 64),
                                                                 ms.ModelFile("a.gguf", 2, "a" * 64)], "x", "c")
    assert [f.path for f in m.files] == ["a.gguf", "b.bin"] and m.format == "gguf" and m.total_size == 3
    m.write(tmp_path)
    assert ModelManifest.from_dict(json.loads((tmp_path / "manifest.json").read_text())) == m


def test_a_second_writer_is_refused(store):
    with store.lock(), pytest.raises(UserError, match=r"another model import or pull is running .*\(pid \d+\)"):
        with store.lock():
            pass


def test_model_store_lives_in_the_inventory_cache(tmp_path):
    inv = namedtuple("Inv", "image")(namedtuple("Image", "cache")(tmp_path))
    assert ms.model_store(inv).root == tmp_path / "models"


def test_in_use_is_the_configured_model_and_the_running_version(tmp_path):
    inv = namedtuple("Inv", "image inference")(namedtuple("Image", "cache")(tmp_path),
                                               namedtuple("Inference", "model")("qwen"))
    assert ms.in_use(inv) == {ModelRef("qwen")}
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "plan.json").write_text(json.dumps(
        {"engine": "llama_cpp", "model": {"name": "qwen", "version": "20260101T000000Z-1a2b3c4d"}, "nodes": {}}))
    assert ms.in_use(inv) == {ModelRef("qwen"), ModelRef("qwen", "20260101T000000Z-1a2b3c4d")}
    assert ms.in_use(inv._replace(inference=None)) == {ModelRef("qwen", "20260101T000000Z-1a2b3c4d")}


# --- the push plan (which links carry the weights) ------------------------------------------------------

def _plan_inventory(with_fabric: bool):
    from onedotzero import inventory
    from tests.conftest import REPO

    inv = inventory.load(REPO / "tests/data/inventory.yml")
    return inv if with_fabric else dataclasses.replace(inv, fabric=None)


def test_push_plan_feeds_a_peer_over_the_fabric_when_that_is_faster():
    from models.push import choose

    plan = choose(_plan_inventory(True), ["node0", "node1"], 2**30)
    assert plan.name == "peer"
    assert [(t.source, t.target, t.over) for t in plan.transfers] == [("control", "node0", "lan"),
                                                                       ("node0", "node1", "fabric")]
    # 1 GiB at 1 Gbit/s, then at 20 Gbit/s; control-only sends it twice over the shared 1 Gbit/s
    assert plan.seconds == pytest.approx(2**30 * 8 / 1e9 + 2**30 * 8 / 20e9)
    assert plan.other_seconds == pytest.approx(2 * 2**30 * 8 / 1e9)
    assert "control-only would take ~17.2s" in plan.describe()


def test_push_plan_without_a_fabric_or_when_forced():
    from models.push import choose

    assert choose(_plan_inventory(False), ["node0", "node1"], 2**30).name == "control-only"
    assert choose(_plan_inventory(True), ["node0", "node1"], 2**30, "control-only").name == "control-only"
    assert choose(_plan_inventory(True), ["node0"], 2**30).name == "control-only"  # one target: nobody to feed
    with pytest.raises(UserError, match="--plan peer needs two or more targets on the fabric"):
        choose(_plan_inventory(False), ["node0", "node1"], 2**30, "peer")
