"""Issue 14, "Saves and workspace": durable, race-free saves; one broken file never breaks the rest.

The kill test runs a child process that saves a three-file batch in a loop,
SIGKILLs it at a random moment 20 times, and checks after each kill that every
file is complete and all three come from the same save (all or nothing).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from analysis import atomic
from analysis.atomic import UnsafePathError, clean_stale, recover, staged_dir, write_atomic, write_batch
from analysis.concepts import sets as cs

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"an example sentence about my topic, number {i}" for i in range(12)]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws" / "concepts"


# --- atomic writes ---------------------------------------------------------------------


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.yaml"
    write_atomic(target, "old")
    write_atomic(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.yaml"]


def test_symlink_target_is_refused_and_outside_file_untouched(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "name.yaml").symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"is a symlink"):
        write_atomic(folder / "name.yaml", "evil")
    with pytest.raises(UnsafePathError):
        write_batch(folder, {"name.yaml": "evil"})
    assert outside.read_text() == "precious"


def test_planted_symlink_at_the_old_fixed_temp_name_is_never_followed(workspace):
    workspace.mkdir(parents=True)
    outside = workspace.parent.parent / "outside.txt"
    outside.write_text("precious")
    (workspace / ".my_topic.yaml.tmp").symlink_to(outside)
    cs.save_uploaded_concepts({"my_topic": TEXTS})
    assert outside.read_text() == "precious"
    assert cs.load_concepts()["my_topic"].texts == tuple(TEXTS)


def test_two_sessions_saving_the_same_concept_never_fail(workspace):
    errors: list[BaseException] = []

    def save(tag: str) -> None:
        for i in range(15):
            try:
                cs.save_uploaded_concepts({"my_topic": [f"{t} ({tag}{i})" for t in TEXTS]})
            except BaseException as err:  # noqa: BLE001 - the test collects every failure
                errors.append(err)

    threads = [threading.Thread(target=save, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    texts = cs.load_concepts()["my_topic"].texts
    assert len(texts) == len(TEXTS) and len({t.rsplit("(", 1)[1] for t in texts}) == 1  # one save, whole
    assert not list(workspace.glob(".*.tmp"))


def test_batch_failure_before_the_commit_point_applies_nothing(tmp_path, monkeypatch):
    write_batch(tmp_path, {"a.yaml": "a1", "b.yaml": "b1"})
    real = atomic._write_temp
    calls = {"n": 0}

    def flaky(target, data, suffix=atomic.TMP_SUFFIX):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(target, data, suffix)

    monkeypatch.setattr(atomic, "_write_temp", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_batch(tmp_path, {"a.yaml": "a2", "b.yaml": "b2"})
    assert (tmp_path / "a.yaml").read_text() == "a1" and (tmp_path / "b.yaml").read_text() == "b1"
    assert not list(tmp_path.glob(".*.tmp"))


def test_batch_interrupted_after_the_commit_point_is_completed_by_recover(tmp_path, monkeypatch):
    write_batch(tmp_path, {"a.yaml": "a1", "b.yaml": "b1"})
    real = os.replace
    calls = {"n": 0}

    def dies_on_second(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the process stopped between the two renames
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_batch(tmp_path, {"a.yaml": "a2", "b.yaml": "b2"})
    monkeypatch.setattr(atomic.os, "replace", real)
    assert (tmp_path / "a.yaml").read_text() == "a2" and (tmp_path / "b.yaml").read_text() == "b1"  # half
    recover(tmp_path)
    assert (tmp_path / "a.yaml").read_text() == "a2" and (tmp_path / "b.yaml").read_text() == "b2"
    assert not list(tmp_path.glob(".*.batch.json"))


def test_load_all_sets_completes_an_interrupted_multi_concept_upload(workspace, monkeypatch):
    cs.save_uploaded_concepts({"topic_a": TEXTS, "topic_b": TEXTS})
    new = [t + " (v2)" for t in TEXTS]
    real = os.replace
    calls = {"n": 0}

    def dies_on_second(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        cs.save_uploaded_concepts({"topic_a": new, "topic_b": new})
    monkeypatch.setattr(atomic.os, "replace", real)
    loaded = cs.load_concepts()
    assert loaded["topic_a"].texts == loaded["topic_b"].texts == tuple(new)


def test_stale_temps_are_cleaned_young_ones_kept(tmp_path):
    old, young = tmp_path / ".a.yaml.x1.tmp", tmp_path / ".a.yaml.x2.tmp"
    old.write_text("partial")
    young.write_text("in progress")
    past = time.time() - atomic.STALE_SECONDS - 60
    os.utime(old, (past, past))
    assert clean_stale(tmp_path) == [old]
    assert young.exists() and not old.exists()


_CHILD = textwrap.dedent("""
    import sys
    from analysis.atomic import write_batch
    folder, i = sys.argv[1], 0
    print("ready", flush=True)
    while True:
        i += 1
        body = f"{i}\\n" + "x" * 300_000 + "\\nEND\\n"
        write_batch(folder, {"a.txt": body, "b.txt": body, "c.txt": body})
""")


def _read_versions(folder: Path) -> set[int]:
    versions = set()
    for name in ("a.txt", "b.txt", "c.txt"):
        text = (folder / name).read_text()
        assert text.endswith("\nEND\n"), f"{name} is truncated"
        versions.add(int(text.split("\n", 1)[0]))
    return versions


def test_killed_mid_save_20_times_loses_nothing(tmp_path):
    folder = tmp_path / "ws"
    write_batch(folder, {n: "0\n" + "x" * 300_000 + "\nEND\n" for n in ("a.txt", "b.txt", "c.txt")})
    rng = random.Random(14)
    seen = []
    for _ in range(20):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.005, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        recover(folder)
        versions = _read_versions(folder)
        assert len(versions) == 1, f"a batch was half applied: {versions}"
        seen.append(versions.pop())
    assert max(seen) > 0  # the children did save (the test exercised real writes)
    print(f"20 kills; last versions seen {seen}")


# --- staged command output ------------------------------------------------------------------


def test_staged_dir_failure_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_dir(out) as stage:
            (stage / "half.png").write_bytes(b"partial")
            raise RuntimeError("model failed")
    assert not out.exists()


def test_staged_dir_success_moves_files_and_folders(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with staged_dir(out) as stage:
        (stage / "fig.png").write_bytes(b"png")
        (stage / "cavs").mkdir()
        (stage / "cavs" / "cavs.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["cavs", "fig.png", "keep.txt"]
    assert (out / "cavs" / "cavs.json").read_text() == "{}"


# --- names and the workspace ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["background\n", "my_topic\n", "ok_name\r", "x"])
def test_names_validate_with_fullmatch(name):
    with pytest.raises(ValueError, match="is not valid"):
        cs.check_name(name)


def test_newline_twin_of_a_shipped_name_cannot_be_saved(workspace):
    with pytest.raises(ValueError, match="is not valid"):
        cs.save_uploaded_concepts({"background\n": TEXTS})
    assert not workspace.exists() or not list(workspace.iterdir())


def test_one_unreadable_workspace_yaml_is_skipped_with_a_warning(workspace):
    cs.save_uploaded_concepts({"my_topic": TEXTS})
    (workspace / "broken.yaml").write_text("name: [unclosed\n")
    (workspace / "Bad Stem.yaml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.warns(cs.WorkspaceWarning) as record:
        concepts = cs.load_concepts()
    assert "my_topic" in concepts and "positive_sentiment" in concepts
    messages = " | ".join(str(w.message) for w in record)
    assert "broken.yaml" in messages and "Bad Stem.yaml" in messages
    assert len(cs.workspace_problems()) == 2


def test_workspace_twin_of_a_shipped_name_is_skipped_not_fatal(workspace):
    workspace.mkdir(parents=True)
    doc = {"name": "background", "kind": "background", "title": "t", "description": "d", "provenance": "p",
           "texts": TEXTS}
    (workspace / "background.yaml").write_text(yaml.safe_dump(doc))
    with pytest.warns(cs.WorkspaceWarning, match=r"reuses the shipped name 'background'"):
        sets = cs.load_all_sets()
    assert sets["background"].source == "shipped"


def test_remove_deletes_any_workspace_file_stem(workspace):
    workspace.mkdir(parents=True)
    for stem in ("Bad Stem", "x", "ok_name"):
        (workspace / f"{stem}.yaml").write_text("garbage: [")
    for stem in ("Bad Stem", "x", "ok_name"):
        cs.delete_workspace_concept(stem)
    assert list(workspace.iterdir()) == []


def test_remove_refuses_shipped_and_path_tricks(workspace):
    workspace.mkdir(parents=True)
    with pytest.raises(ValueError, match="is shipped and cannot be deleted"):
        cs.delete_workspace_concept("background")
    with pytest.raises(ValueError, match="no such workspace concept"):
        cs.delete_workspace_concept("../../etc/passwd")
    assert (cs.SHIPPED_DIR / "background.yaml").exists()


def test_cli_concepts_list_add_and_bias_check_survive_a_broken_file(workspace, capsys):
    from analysis.cli import main

    workspace.mkdir(parents=True)
    (workspace / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["concepts"]) == 0
    out, err = capsys.readouterr()
    assert "positive_sentiment" in out and "warning: skipped" in err and "broken.yaml" in err
    upload = workspace.parent / "my_topic.txt"
    upload.write_text("\n".join(TEXTS))
    assert main(["concepts", "add", str(upload)]) == 0
    assert main(["concepts", "remove", "broken"]) == 0
    assert sorted(p.name for p in workspace.glob("*.yaml")) == ["my_topic.yaml"]


def test_train_sae_default_output_is_the_workspace_not_shipped_assets(workspace):
    from analysis.paths import ASSETS, workspace_root
    from analysis.saes.training import SAETrainConfig, default_out_dir

    out = default_out_dir("gemma-3-270m-offline", SAETrainConfig())
    assert out.is_relative_to(workspace_root() / "saes")
    assert not out.resolve().is_relative_to(ASSETS.resolve())
