"""Live inspection: per-prompt loss, residual norms, logit lens, attention and next token."""

from __future__ import annotations

import zlib

import pandas as pd
import streamlit as st

from analysis.inspection.lens import (
    MAX_TOP_K,
    InspectConfig,
    add_lens,
    check_prompts,
    display_token,
    inspect_prompt,
    lens_top_k_frame,
    score_prompts,
)
from analysis.inspection.recipes import build_figure
from analysis.recipes import make_recipe
from analysis.uploads import UploadError, parse_texts
from app.figures import render_figure
from app.text import md_escape, show_error
from app.state import get, put, require_model

DEFAULT_PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is\n"
    "The quick brown fox jumps over the lazy dog"
)
SCORE_CHUNK = 4  # prompts per cached scoring call (and per progress step)


@st.cache_data(show_spinner=False, max_entries=16)  # attention is layers x heads x T x T
def _forward(_lm, model_name: str, text: str, top_k: int):
    """The cheap parts (norms, attention, next token) of one forward pass; residuals kept for the lens."""
    return inspect_prompt(_lm, text, top_k, lens=False)


@st.cache_data(show_spinner=False, max_entries=16)
def _lens(_lm, model_name: str, text: str, top_k: int):
    """The logit lens added to the cached forward pass: no second forward pass."""
    return add_lens(_lm, _forward(_lm, model_name, text, top_k), top_k)


@st.cache_data(show_spinner=False, max_entries=256)
def _score(_lm, model_name: str, texts: tuple[str, ...]) -> pd.DataFrame:
    return score_prompts(_lm, list(texts), batch_size=SCORE_CHUNK)


def _read_prompts(text: str, upload) -> list[str] | None:
    """Prompts from the upload if given, else the text area; None after showing an error."""
    if upload is not None:
        try:
            return parse_texts(upload.name, upload.getvalue())
        except UploadError as err:
            show_error(err)
            return None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        st.error("No prompts: type at least one prompt (one per line) or upload a file.")
        return None
    return prompts


def _score_all(lm, prompts: list[str]) -> pd.DataFrame | None:
    try:
        check_prompts(lm, prompts)
    except ValueError as err:
        show_error(err)
        return None
    bar = st.progress(0.0, text=f"Scoring {len(prompts)} prompts ...")
    parts = []
    try:
        for start in range(0, len(prompts), SCORE_CHUNK):
            parts.append(_score(lm, lm.name, tuple(prompts[start: start + SCORE_CHUNK])))
            bar.progress(min(1.0, (start + SCORE_CHUNK) / len(prompts)))
    except ValueError as err:
        show_error(err)
        return None
    finally:
        bar.empty()
    return pd.concat(parts, ignore_index=True)


st.title("Live inspection")
st.caption(
    "Run prompts through the model: the loss of each prompt, then for one prompt the "
    "residual-stream norms, the logit lens (the model's final norm and unembedding applied "
    "to every layer), attention patterns and the next-token prediction."
)
lm = require_model()

with st.form("inspect_inputs"):
    text = st.text_area("Prompts (one per line)", value=DEFAULT_PROMPTS, height=120)
    upload = st.file_uploader("Or upload prompts (.txt, .csv, .jsonl)", type=["txt", "csv", "jsonl"])
    top_k = st.number_input("Top-k tokens", min_value=1, max_value=MAX_TOP_K, value=10, step=1)
    submitted = st.form_submit_button("Run inspection", type="primary")

if submitted:
    prompts = _read_prompts(text, upload)
    # a rejected input clears the previous results: they would read as the new file's
    put("inspect_prompts", prompts)
    if prompts is None:
        st.stop()
    put("inspect_top_k", int(top_k))

prompts = get("inspect_prompts")
if not prompts:
    st.info("Enter prompts (one per line) or upload a file, then press **Run inspection**.")
    st.stop()

table = _score_all(lm, prompts)
if table is None:
    st.stop()

st.subheader("Prompts")
st.caption("Mean next-token cross-entropy per prompt (nats). Select a row to inspect that prompt.")
shown = table.rename(columns={"text": "prompt", "n_tokens": "tokens"})
# the table's key names its prompt set, so a new set opens on prompt 1, not the old selection
digest = zlib.crc32("\n".join(prompts).encode())
event = st.dataframe(
    shown, on_select="rerun", selection_mode="single-row", hide_index=True, key=f"inspect_table_{digest:08x}",
    width="stretch", column_config={"loss": st.column_config.NumberColumn(format="%.3f")},
)
rows = event.selection.rows if event is not None else []
chosen = rows[0] if rows and rows[0] < len(prompts) else 0
prompt = prompts[chosen]
k = int(get("inspect_top_k", 10))

try:
    with st.spinner("Inspecting the prompt ..."):
        insp = _forward(lm, lm.name, prompt, k)
except ValueError as err:
    show_error(err)
    st.stop()

st.markdown(f"**Inspecting prompt {chosen + 1}** ({insp.n_tokens} tokens with BOS): {md_escape(prompt)}")


def _show(kind: str, cfg: InspectConfig) -> None:
    fig, frame = build_figure(kind, insp, cfg)
    render_figure(fig, data=frame, recipe=make_recipe(kind, lm.name, cfg.to_dict()),
                  key=f"inspect-{kind}", filename=f"{kind}_prompt{chosen + 1}")


st.subheader("Residual-stream norms")
log_norms = st.checkbox("Log colour scale", value=True, key="inspect_log_norms",
                        help="BOS usually has a far larger norm than the other tokens")
_show("residual_norms", InspectConfig(text=prompt, top_k=k, log_norms=log_norms))

st.subheader("Logit lens")
lens_box = st.container()  # filled last: the cheap figures below appear first

st.subheader("Attention pattern")
left, right = st.columns(2)
layer = left.selectbox("Layer", list(range(insp.n_layers)), key="inspect_layer")
head = right.selectbox("Head", list(range(insp.n_heads)), key="inspect_head")
_show("attention", InspectConfig(text=prompt, top_k=k, layer=int(layer), head=int(head)))

st.subheader("Next-token prediction")
_show("next_token", InspectConfig(text=prompt, top_k=k))


with lens_box:
    metric_label = st.radio("Lens colour", ["probability", "rank"], horizontal=True, key="inspect_metric")
    metric = "prob" if metric_label == "probability" else "rank"
    with st.spinner(f"Logit lens: {insp.n_layers} layers x {insp.n_tokens} tokens x the whole vocabulary ..."):
        insp = _lens(lm, lm.name, prompt, k)
    _show("logit_lens", InspectConfig(text=prompt, top_k=k, metric=metric))
    positions = list(range(insp.n_tokens))
    c1, c2 = st.columns(2)
    position = c1.selectbox(
        "Position for the top-k table", positions, index=len(positions) - 1, key="inspect_position",
        format_func=lambda p: f"{p}: {display_token(insp.tokens[p])}",
    )
    # Three ranks fit a page 1000 px wide without scrolling (five did not); more on request (display only,
    # no recompute). Every layer shows without scrolling the table.
    ranks = (int(c2.number_input("Ranks in the table", 1, k, min(k, 3), key=f"inspect_ranks_{k}",
                                 help="more ranks may need scrolling sideways on a narrow page"))
             if k > 1 else 1)
    st.caption(f"Top-{ranks} of the top-{k} logit-lens tokens at position {position}, one row per layer "
               "(probability in brackets).")
    st.dataframe(lens_top_k_frame(insp, position).iloc[:, :ranks], width="stretch",
                 height=35 * (insp.n_layers + 1) + 3)
