"""The manifest contract at 10,000 inputs, planned without running a model (no Ray needed): a rerun reads no input
whose file has not changed, yet one input modified among 10,000 is seen and named; a copied folder is digested
again and is still the same job; --verify-inputs digests everything."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from gan.batch.engine import MANIFEST, BatchOptions, JobMismatchError
from gan.batch.stylize import stylize_job
from gan.checkpoint import generator_checkpoint, to_bytes
from gan.io.storage import LocalStorage, open_storage
from gan.models.cyclegan import CycleGANConfig, build_generator

N = 10_000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = CycleGANConfig(ngf=2, n_blocks=0)
    path = tmp_path_factory.mktemp("ckpt") / "g.pt"
    path.write_bytes(to_bytes(generator_checkpoint("cyclegan", cfg, build_generator(cfg))))
    return str(path)


@pytest.fixture
def digests(monkeypatch) -> list[str]:
    """The keys whose bytes the planning read to digest them."""
    read: list[str] = []
    original = LocalStorage.content_tag

    def counted(self, key):
        read.append(key)
        return original(self, key)
    monkeypatch.setattr(LocalStorage, "content_tag", counted)
    return read


def _inputs(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):  # planning never decodes: any bytes will do
        (folder / f"photo-{i:05d}.jpg").write_bytes(b"photo %05d" % i)
    return folder


def _plan(ckpt: str, src: Path, out: Path, **kw):
    """Plan the job and check it against its output folder (what a run does before the first image moves)."""
    job = stylize_job(str(src), BatchOptions(checkpoint=ckpt, output=open_storage(str(out)), progress=False, **kw))
    assert job.resume() is None
    return job


def _modify_in_place(path: Path, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as f:  # same size, same inode
        f.write(b"PHOTO")
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_rerun_reads_no_unchanged_input_and_one_modified_among_10000_is_named(ckpt, tmp_path, digests):
    src, out = _inputs(tmp_path / "in", N), tmp_path / "out"
    first = _plan(ckpt, src, out)
    assert len(first.todo) == N and len(digests) == N  # the first run digests every input once
    digests.clear()
    written = (out / MANIFEST).stat().st_mtime_ns
    again = _plan(ckpt, src, out)
    assert len(again.todo) == N and digests == []       # the rerun reads none of them
    assert (out / MANIFEST).stat().st_mtime_ns == written  # and leaves the manifest as it was

    _modify_in_place(src / "photo-04711.jpg")
    with pytest.raises(JobMismatchError, match=r"holds a different stylize job \(1 input changed "
                                               r"\(photo-04711\.jpg\)\).*--overwrite"):
        _plan(ckpt, src, out)
    assert digests == ["photo-04711.jpg"]  # only the file whose mtime changed was read


def test_a_copied_folder_is_digested_again_and_is_still_the_same_job(ckpt, tmp_path, digests):
    src, out = _inputs(tmp_path / "in", 1000), tmp_path / "out"
    _plan(ckpt, src, out)
    manifest = (out / MANIFEST).read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)  # new inodes and mtimes, the same bytes
    digests.clear()
    job = _plan(ckpt, copy, out)  # not refused
    assert len(digests) == 1000 and len(job.todo) == 1000
    assert (out / MANIFEST).read_bytes() != manifest  # it records the copy's stats, so the next rerun reads none
    digests.clear()
    _plan(ckpt, copy, out)
    assert digests == []


def test_verify_inputs_sees_a_change_that_kept_size_mtime_and_inode(ckpt, tmp_path, digests):
    src, out = _inputs(tmp_path / "in", 1000), tmp_path / "out"
    _plan(ckpt, src, out)
    _modify_in_place(src / "photo-00042.jpg", keep_mtime=True)
    digests.clear()
    with pytest.raises(JobMismatchError, match=r"1 input changed \(photo-00042\.jpg\)"):
        _plan(ckpt, src, out, verify_inputs=True)
    assert len(digests) == 1000


def test_the_manifest_is_written_as_json_writes_its_dict_and_fingerprinted_as_before(monkeypatch):
    """The manifest's per-output entries are streamed into its bytes, never held as dicts: the bytes and the
    fingerprint are still those of json.dumps on the whole dict, so folders written before stay the same job."""
    import hashlib
    import json

    from gan.batch import manifest
    from gan.batch.manifest import IMAGE_POLICY, job_manifest
    from gan.batch.pipeline import Row
    from gan.io.sources import InputItem
    items = [InputItem("café/ü.jpg", "café/ü.jpg", size=10, tag="b2:aa", stat="10:1:1"),
             InputItem('q"uote\\.jpg', 'q"uote\\.jpg', size=11, tag="b2:bb", stat="11:2:2"),
             InputItem("train.tfrec/img7", "train.tfrec", offset=40, length=99, container="tfrecord", size=99,
                       tag="crc:1"),
             InputItem("z.jpg", "z.jpg", size=12, tag="b2:cc", stat="12:3:3"),
             InputItem("a.jpg", "a.jpg", size=13, tag="b2:dd", stat="13:4:4")]
    plan = [Row(i.name, n, f"out-{len(items) - n}.jpg", i) for n, i in enumerate(items)]
    plan.append(Row("sample 0", len(plan), "00000.jpg"))  # a generate row: no input
    settings, extra = {"seed": 3}, {"input": "in/ü", "output": "out", "checkpoint": "g.pt"}
    m = job_manifest("stylize", "cyclegan", b"weights", plan, settings, extra)

    full_settings = {"job": "stylize", "kind": "cyclegan", "checkpoint_sha256": hashlib.sha256(b"weights").hexdigest(),
                     "image_policy": IMAGE_POLICY, **settings}
    outputs = {r.out: [r.name, r.item.size, r.item.tag] if r.item else [r.name] for r in plan}
    stats = {r.item.key: [r.item.stat, r.item.tag] for r in plan if r.item and r.item.stat}
    fingerprint = hashlib.sha256(json.dumps([full_settings, outputs], sort_keys=True).encode()).hexdigest()
    assert m.fingerprint == fingerprint and m.head["settings"] == full_settings
    whole = {"job": "stylize", "fingerprint": fingerprint, "settings": full_settings, **extra, "outputs": outputs,
             "input_stats": stats}
    assert b"".join(m.blocks()) == json.dumps(whole, indent=1, sort_keys=True).encode()
    assert json.loads(b"".join(m.blocks())) == whole
    monkeypatch.setattr(manifest, "BLOCK", 64)  # what is written and compared block by block: the same bytes
    assert len(list(m.blocks())) > 3 and b"".join(m.blocks()) == json.dumps(whole, indent=1, sort_keys=True).encode()
    no_items = job_manifest("generate", "dcgan", b"w", plan[-1:], {"count": 1}, {})
    assert "input_stats" not in json.loads(b"".join(no_items.blocks()))
    assert b"".join(no_items.blocks()) == json.dumps({**no_items.head, "outputs": {"00000.jpg": ["sample 0"]}},
                                                     indent=1, sort_keys=True).encode()


def test_a_rerun_compares_the_manifest_block_by_block_and_never_reads_it_whole(ckpt, tmp_path, digests, monkeypatch):
    """The folder's manifest is compared with the job's a block at a time (at 1,000,000 inputs each is ~210 MB):
    the check of a rerun of the same job reads it only in ranges and leaves it as it was; a changed stat, a change
    near its end or a byte more is seen (the same job: written again), and one cut short is refused as unreadable."""
    from gan.batch import manifest
    monkeypatch.setattr(manifest, "BLOCK", 4096)
    src, out = _inputs(tmp_path / "in", 300), tmp_path / "out"
    _plan(ckpt, src, out)
    path = out / MANIFEST
    written, stamp = path.read_bytes(), path.stat().st_mtime_ns
    assert len(written) > 10 * 4096
    job = stylize_job(str(src), BatchOptions(checkpoint=ckpt, output=open_storage(str(out)), progress=False))
    whole: list[str] = []
    read = LocalStorage.read
    monkeypatch.setattr(LocalStorage, "read", lambda self, key: whole.append(key) or read(self, key))
    assert job.resume() is None  # the check against the folder (the planning read the stats section before)
    assert MANIFEST not in whole and path.stat().st_mtime_ns == stamp  # compared in ranges, not rewritten
    monkeypatch.setattr(LocalStorage, "read", read)

    def one_digit_changed(at: int) -> bytes:  # the same size, still JSON
        return written[:at] + bytes([48 + (written[at] - 47) % 10]) + written[at + 1:]
    entry = b'"photo-00299.jpg": [\n   "'
    stat = written.index(entry, written.index(b'"input_stats"')) + len(entry)  # the last input's size:mtime:inode
    tag = written.rindex(b'"\n  ]') - 1  # the last character of the last output's tag
    for damaged, read_again in ((one_digit_changed(stat), ["photo-00299.jpg"]),  # its stat: digested again
                                (one_digit_changed(tag), []), (written + b"\n", [])):
        path.write_bytes(damaged)
        digests.clear()
        _plan(ckpt, src, out)
        assert path.read_bytes() == written and digests == read_again
    path.write_bytes(written[:-1])
    with pytest.raises(JobMismatchError, match="unreadable"):
        _plan(ckpt, src, out)


def test_a_rerun_reads_the_input_stats_entry_by_entry_and_any_other_layout_whole(tmp_path, monkeypatch):
    """A rerun's known inputs come from the manifest's input stats, read entry by entry as the sorted listing asks
    for them (our layout) or parsed whole (any other); a key asked for out of order, an entry that is not one as we
    write it and what follows it, or a manifest cut short, are not known (their files are digested again)."""
    import json

    from gan.batch import manifest
    from gan.batch.manifest import known_inputs
    monkeypatch.setattr(manifest, "BLOCK", 40)  # parsed in chunks of about that many bytes: boundaries inside
    stats = {"a.jpg": ["10:1:1", "b2:aa"], "b/\u00e9.jpg": ["12:3:3", "b2:cc"], 'q"\\.jpg': ["11:2:2", "b2:bb"],
             "z.jpg": ["13:4:4", "b2:dd"]}  # keys that json escapes: a non-ASCII letter, a quote, a backslash
    whole = {"job": "stylize", "fingerprint": "f", "outputs": {"a.jpg": ["a.jpg", 10, "b2:aa"]}, "input_stats": stats,
             "settings": {"seed": 0}}
    keys = sorted(stats)
    expected = [(k, (stats[k][0], stats[k][1])) for k in keys]
    for layout in ({"indent": 1, "sort_keys": True}, {}, {"indent": 1}):  # ours, then others: parsed whole
        (tmp_path / MANIFEST).write_text(json.dumps(whole, **layout))
        known = known_inputs(LocalStorage(str(tmp_path)))
        assert [(k, known.get(k)) for k in ["0.jpg"] + keys] == [("0.jpg", None)] + expected, layout
    ours = json.dumps(whole, indent=1, sort_keys=True)
    (tmp_path / MANIFEST).write_text(ours)
    known = known_inputs(LocalStorage(str(tmp_path)))
    assert known.get(keys[2]) == expected[2][1] and known.get(keys[0]) is None  # out of order: not known
    damaged = ours.replace('"12:3:3"', "12")  # the second entry is not one as we write it
    (tmp_path / MANIFEST).write_text(damaged)
    known = known_inputs(LocalStorage(str(tmp_path)))
    assert [known.get(k) for k in keys] == [expected[0][1], None, None, None]
    (tmp_path / MANIFEST).write_text('{\n "input_stats": {\n  "a.jpg": [')  # cut short: nothing known
    assert known_inputs(LocalStorage(str(tmp_path))).get("a.jpg") is None
    (tmp_path / MANIFEST).unlink()
    assert known_inputs(LocalStorage(str(tmp_path))).get("a.jpg") is None


def test_naming_a_difference_or_zipping_parses_the_manifest_without_its_input_stats():
    """The input stats are most of a local job's manifest and only a rerun's planning reads them: the parse that
    names what differs (or lists what to zip) leaves them out when it finds them as we write them; any other
    layout is parsed whole."""
    import json

    from gan.batch.manifest import parse_manifest
    whole = {"fingerprint": "f", "input": "in", "input_stats": {"a.jpg": ["10:1:1", "b2:aa"], "b.jpg": ["1:2:3", "x"]},
             "job": "stylize", "outputs": {"a.jpg": ["a.jpg", 10, "b2:aa"]}, "settings": {"seed": 0}}
    ours = json.dumps(whole, indent=1, sort_keys=True).encode()
    assert parse_manifest(ours) == whole
    assert parse_manifest(ours, stats=False) == {**whole, "input_stats": {}}
    other = json.dumps(whole).encode()
    assert parse_manifest(other, stats=False) == whole
    assert parse_manifest(ours[:-5], stats=False) == {"unreadable": True}


def test_an_s3_listing_asks_page_by_page_and_a_blip_retries_only_that_page(s3, bucket, monkeypatch):
    from botocore.exceptions import ClientError

    from gan.io.storage import S3Storage
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"job/in/{4 - i}.jpg", Body=b"x" * (i + 1))
    s3.put_object(Bucket=bucket, Key="job/other.jpg", Body=b"not listed")
    storage = S3Storage(bucket, "job")
    storage.list_page = 2
    original, calls = storage.client.list_objects_v2, []

    def list_objects_v2(**kw):
        calls.append(kw.get("ContinuationToken"))
        if len(calls) == 2:  # the second page, once: S3 asks to slow down
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "ListObjectsV2")
        return original(**kw)
    monkeypatch.setattr(storage.client, "list_objects_v2", list_objects_v2)

    infos = storage.list_info("in")
    assert [(i.key, i.size) for i in infos] == [(f"in/{k}.jpg", 5 - k) for k in range(5)]
    assert all(i.tag.startswith("etag:") and len(i.tag) > 5 for i in infos)
    # 3 pages of 2, 2 and 1 keys: the first page is not asked again, the failed second one is asked with its token
    assert len(calls) == 4 and calls[0] is None and calls[1] == calls[2] is not None and calls[3] not in calls[:3]
