"""Concept-set loading, validation and the persistent workspace."""

from __future__ import annotations

import pytest
import yaml

from analysis.concepts import sets as cs
GOOD_TEXTS = [f"This is example sentence number {i} about the concept." for i in range(12)]


def _write(folder, stem, **overrides):
    doc = {
        "name": stem, "kind": "concept", "title": "T", "description": "D", "provenance": "P",
        "background": "background", "mentions": [], "words": [], "texts": list(GOOD_TEXTS),
    }
    doc.update(overrides)
    for key in [k for k, v in doc.items() if v is _DROP]:
        del doc[key]
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


_DROP = object()


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    folder = tmp_path / "ws"
    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(folder))
    return folder / "concepts"


def test_shipped_sets_all_validate():
    concepts = cs.load_concepts()
    assert len(concepts) >= 17
    for name, s in concepts.items():
        assert s.source == "shipped" and s.kind == "concept"
        assert len(s.texts) >= 80, name
        assert s.background == "background"
    assert len(cs.background_texts()) >= 400
    assert "positive_sentiment" in concepts and "negative_sentiment" in concepts


def test_good_file_parses(tmp_path):
    s = cs.parse_concept_file(_write(tmp_path, "my_concept"), source="workspace")
    assert s.name == "my_concept" and s.texts == tuple(GOOD_TEXTS) and s.source == "workspace"


@pytest.mark.parametrize("overrides, message", [
    ({"texts": GOOD_TEXTS + [GOOD_TEXTS[3]]}, "duplicates text 4"),
    ({"texts": GOOD_TEXTS + ["   "]}, "is empty"),
    ({"texts": GOOD_TEXTS + ["hi"]}, "shorter than"),
    ({"texts": GOOD_TEXTS + ["x" * (cs.MAX_CHARS + 1)]}, "more than"),
    ({"texts": GOOD_TEXTS[:3]}, "at least"),
    ({"texts": GOOD_TEXTS + [42]}, "not a string"),
    ({"texts": "just one string"}, "must be a list"),
    ({"title": _DROP}, "missing fields ['title']"),
    ({"texts": _DROP}, "missing fields ['texts']"),
    ({"background": _DROP}, "needs a 'background'"),
    ({"kind": "mystery"}, "kind 'mystery'"),
    ({"name": "other_name"}, "must match the file name"),
    ({"words": "good"}, "list of strings"),
])
def test_bad_files_rejected(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        cs.parse_concept_file(_write(tmp_path, "bad_concept", **overrides))


def test_not_yaml_mapping_and_broken_yaml(tmp_path):
    (tmp_path / "a_list.yaml").write_text("- one\n- two\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        cs.parse_concept_file(tmp_path / "a_list.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not a readable YAML"):
        cs.parse_concept_file(tmp_path / "broken.yaml")


def test_unknown_background_skips_that_workspace_file_with_a_warning(workspace):
    workspace.mkdir(parents=True)
    _write(workspace, "orphan", background="no_such_background")
    with pytest.warns(cs.WorkspaceWarning, match=r"orphan\.yaml: unknown background 'no_such_background'"):
        concepts = cs.load_concepts()
    assert "orphan" not in concepts and "positive_sentiment" in concepts


def test_workspace_round_trip(workspace):
    made = cs.save_uploaded_concepts({"my_topic": GOOD_TEXTS})
    assert [m.name for m in made] == ["my_topic"]
    assert (workspace / "my_topic.yaml").exists()
    loaded = cs.load_concepts()  # a fresh read from disk, as after an app restart
    assert loaded["my_topic"].texts == tuple(GOOD_TEXTS)
    assert loaded["my_topic"].source == "workspace"
    assert "positive_sentiment" in loaded
    cs.save_uploaded_concepts({"my_topic": GOOD_TEXTS[:10]})  # re-upload replaces
    assert len(cs.load_concepts()["my_topic"].texts) == 10
    cs.delete_workspace_concept("my_topic")
    assert "my_topic" not in cs.load_concepts()
    with pytest.raises(ValueError, match="no such workspace concept"):
        cs.delete_workspace_concept("my_topic")


def test_workspace_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv("REPSCOPE_WORKSPACE", raising=False)
    monkeypatch.setenv("REPSCOPE_CACHE", str(tmp_path))
    assert cs.workspace_dir() == tmp_path / "workspace" / "concepts"


def test_save_rejects_bad_names_and_texts(workspace):
    with pytest.raises(ValueError, match="is a shipped concept"):
        cs.save_uploaded_concepts({"positive_sentiment": GOOD_TEXTS})
    with pytest.raises(ValueError, match="snake_case"):
        cs.save_uploaded_concepts({"My Concept": GOOD_TEXTS})
    with pytest.raises(ValueError, match="unknown background"):
        cs.save_uploaded_concepts({"fine_name": GOOD_TEXTS}, background="nope")
    with pytest.raises(ValueError, match="duplicates"):
        cs.save_uploaded_concepts({"fine_name": GOOD_TEXTS + GOOD_TEXTS[:1]})
    # nothing was written by the failed calls
    assert not workspace.exists() or not list(workspace.glob("*.yaml"))
    with pytest.raises(ValueError, match="shipped and cannot be deleted"):
        cs.delete_workspace_concept("positive_sentiment")
