"""What a reader sees, measured in the browser: overflow, cut-off titles, and self-explaining figures.

Three checks, each returning a list of human-readable problems (empty = fine):

* :func:`overflow_problems`: an element wider than its container (a
  horizontal scrollbar the reader must use), text cut off by its box
  (headings, labels, buttons, captions, selectbox values, Plotly titles,
  annotations and legend entries), a figure title that runs into its plot
  or into an annotation (a subplot title),
  or prose that markdown turned into a link by accident (a relative ``href``).
* :func:`axis_problems`: on axes that show layers, counts or steps (integer
  data), the range must not start below the data's minimum by more than half
  a unit (the "accuracy axis from −1 to 18" bug).
* :func:`figure_problems`: every Plotly figure has a title, titled axes, and
  a legend or colour bar that names what colour encodes; marks drawn over a
  colour-bar trace (dots on a heatmap) are named in a shown legend.
"""

from __future__ import annotations

_OVERFLOW_JS = r"""() => {
  const out = [];
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  const W = main.getBoundingClientRect().right + 1;
  const sel = 'h1,h2,h3,h4,label,button,[data-testid="stCaptionContainer"],[data-testid="stMetricLabel"],' +
              '[data-testid="stMarkdownContainer"] p,.gtitle,.g-xtitle,.g-ytitle';
  for (const el of main.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const text = (el.innerText || el.textContent || '').trim().slice(0, 60);
    if (!text) continue;
    if (r.right > W + 2) out.push(`"${text}" sticks out of the page by ${Math.round(r.right - W)} px`);
  }
  // Any box that cuts its text with an ellipsis (widget labels, selectbox values, buttons, captions).
  const cut = new Set();
  for (const el of main.querySelectorAll('*')) {
    if (el.closest('svg')) continue;
    const cs = getComputedStyle(el);
    if (cs.textOverflow !== 'ellipsis' || cs.overflowX === 'visible') continue;
    if (el.scrollWidth <= el.clientWidth + 1 || el.clientWidth === 0) continue;
    const text = (el.innerText || el.textContent || '').trim().slice(0, 60);
    if (text && !cut.has(text)) { cut.add(text); out.push(`"${text}" is cut off (ellipsis)`); }
  }
  for (const svgText of main.querySelectorAll('.js-plotly-plot .gtitle, .js-plotly-plot .g-xtitle text, ' +
                                              '.js-plotly-plot .g-ytitle text, .js-plotly-plot .annotation-text, ' +
                                              '.js-plotly-plot .legendtext')) {
    const plot = svgText.closest('.js-plotly-plot');
    const pr = plot.getBoundingClientRect(), r = svgText.getBoundingClientRect();
    const text = (svgText.textContent || '').trim().slice(0, 60);
    if (!text || r.width === 0) continue;
    if (r.left < pr.left - 2 || r.right > pr.right + 2 || r.top < pr.top - 2 || r.bottom > pr.bottom + 2)
      out.push(`figure text "${text}" is cut off by its figure`);
  }
  // A (wrapped) title must end above the plot area, whose top is the figure's top margin.
  for (const plot of main.querySelectorAll('.js-plotly-plot')) {
    const title = plot.querySelector('.gtitle'), size = plot._fullLayout && plot._fullLayout._size;
    if (!title || !size || !(title.textContent || '').trim()) continue;
    const over = title.getBoundingClientRect().bottom - (plot.getBoundingClientRect().top + size.t);
    if (over > 2) out.push(`figure title "${title.textContent.trim().slice(0, 60)}" runs ${Math.round(over)} px into its plot`);
    // ...nor into a subplot title or other annotation
    const t = title.getBoundingClientRect();
    for (const note of plot.querySelectorAll('.annotation-text')) {
      const a = note.getBoundingClientRect();
      const dx = Math.min(t.right, a.right) - Math.max(t.left, a.left), dy = Math.min(t.bottom, a.bottom) - Math.max(t.top, a.top);
      if (dx > 2 && dy > 2)
        out.push(`figure title "${title.textContent.trim().slice(0, 40)}" overlaps "${note.textContent.trim().slice(0, 40)}"`);
    }
  }
  // A selectbox shows its value in an <input>, which reports no overflow: measure the text instead.
  const ctx = document.createElement('canvas').getContext('2d');
  for (const el of main.querySelectorAll('input')) {
    const value = el.value || '';
    if (!value || ['range', 'file', 'hidden', 'checkbox', 'radio'].includes(el.type) || el.clientWidth === 0) continue;
    const cs = getComputedStyle(el);
    ctx.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    const room = el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    if (ctx.measureText(value).width > room + 2) out.push(`"${value.slice(0, 60)}" is cut off by its input box`);
  }
  // A bare expression in a page script is drawn by Streamlit's "magic" as the object's help card.
  for (const el of main.querySelectorAll('[data-testid="stHelp"]'))
    out.push(`an object is shown by Streamlit magic (a bare expression in the page): "${(el.innerText || '').trim().slice(0, 60)}"`);
  // Text like "resid_post[l](positive)" becomes a markdown link by accident: flag relative links in prose.
  for (const a of main.querySelectorAll('[data-testid="stMarkdownContainer"] a, [data-testid="stCaptionContainer"] a')) {
    const href = a.getAttribute('href') || '';
    if (!/^(https?:|mailto:|#|\/)/.test(href)) out.push(`text "${(a.innerText || '').slice(0, 40)}" renders as a link to "${href}"`);
  }
  for (const el of main.querySelectorAll('[data-testid="stElementContainer"]')) {
    const parent = el.parentElement;
    if (!parent) continue;
    if (el.getBoundingClientRect().right > parent.getBoundingClientRect().right + 4 &&
        el.getBoundingClientRect().width > 0)
      out.push(`an element (${el.innerText.trim().slice(0, 40)}) is wider than its container`);
  }
  return out;
}"""

_FIGURES_JS = r"""() => {
  const figs = [];
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const L = el._fullLayout, D = el._fullData || [];
    if (!L) continue;
    const axes = {};
    for (const k of Object.keys(L)) {
      if (!/^[xy]axis\d*$/.test(k)) continue;
      const a = L[k];
      if (!a || a.visible === false) continue;
      axes[k] = {title: (a.title && a.title.text) || '', range: a.range, type: a.type,
                 matches: a.matches || null, anchor: a._id};
    }
    const traces = D.filter(t => t.visible !== false).map(t => ({
      type: t.type, name: t.name || '', showlegend: t.showlegend !== false,
      colorbar: !!(t.showscale || (t.marker && t.marker.showscale)),
      celltext: !!(t.texttemplate && t.text),
      colorbarTitle: (t.colorbar && t.colorbar.title && t.colorbar.title.text) ||
                     (t.marker && t.marker.colorbar && t.marker.colorbar.title && t.marker.colorbar.title.text) || '',
      xaxis: t.xaxis, yaxis: t.yaxis,
      x: Array.isArray(t.x) ? t.x.slice(0, 5000) : (t.x ? Array.from(t.x).slice(0, 5000) : []),
      y: Array.isArray(t.y) ? t.y.slice(0, 5000) : (t.y ? Array.from(t.y).slice(0, 5000) : []),
    }));
    figs.push({title: (L.title && L.title.text) || '', showlegend: L.showlegend !== false,
               legendShown: !!el.querySelector('.legend'),
               legendTitle: (L.legend && L.legend.title && L.legend.title.text) || '',
               coloraxis: !!(L.coloraxis && L.coloraxis.showscale !== false && L.coloraxis.colorbar),
               axes, traces});
  }
  return figs;
}"""

_COUNTLIKE = ("layer", "count", "step", "number", "n ", "latents", "k ")


def overflow_problems(page) -> list[str]:
    return list(page.evaluate(_OVERFLOW_JS))


def figures(page) -> list[dict]:
    return list(page.evaluate(_FIGURES_JS))


def figure_problems(page) -> list[str]:
    out = []
    for fig in figures(page):
        name = fig["title"][:50] or "an untitled figure"
        if not fig["title"].strip():
            out.append("a figure has no title")
        used = {t.get("xaxis") or "x" for t in fig["traces"]} | {t.get("yaxis") or "y" for t in fig["traces"]}
        for key, axis in fig["axes"].items():
            short = key.replace("axis", "")
            if short == "x1":
                short = "x"
            if short not in used and not (short in ("x", "y") and not used):
                continue
            if axis["type"] == "category" or (axis["title"] or "").strip():
                if not (axis["title"] or "").strip() and axis["type"] != "category":
                    out.append(f"{name}: axis {key} has no title")
                continue
            out.append(f"{name}: axis {key} has no title")
        shown = [t for t in fig["traces"] if t["showlegend"] and t["name"]]
        bars = any(t["colorbar"] for t in fig["traces"]) or fig["coloraxis"]
        many = len(fig["traces"]) > 1
        if many and not bars and not (shown and fig["legendShown"]):
            out.append(f"{name}: several traces but no shown legend or colour bar names them")
        # Marks over a colour-bar trace (a heatmap's dots) are explained only by a legend that is shown.
        overlaid = [t for t in fig["traces"] if not t["colorbar"] and t["type"] not in ("heatmap", "contour")]
        if bars and overlaid and not (fig["showlegend"] and fig["legendShown"] and any(t in shown for t in overlaid)):
            out.append(f"{name}: marks drawn over the colour scale are named in no legend")
        for t in fig["traces"]:
            if t["type"] in ("heatmap", "contour") and not t["colorbar"] and not fig["coloraxis"] \
                    and not t.get("celltext"):
                out.append(f"{name}: a heatmap without a colour bar")
    return out


def _integers(values) -> list[float]:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return nums if nums and all(float(v).is_integer() for v in nums) else []


def axis_problems(page) -> list[str]:
    out = []
    for fig in figures(page):
        name = fig["title"][:50] or "an untitled figure"
        for key, axis in fig["axes"].items():
            title = (axis["title"] or "").lower()
            rng = axis.get("range")
            if axis["type"] not in ("linear",) or not rng or not any(w in title + " " for w in _COUNTLIKE):
                continue
            letter = key[0]
            values = []
            for t in fig["traces"]:
                ref = (t.get(f"{letter}axis") or letter).replace(letter, f"{letter}axis")
                if ref in (key, f"{letter}axis") and (ref == key or key == f"{letter}axis"):
                    values += _integers(t[letter])
            if not values:
                continue
            lo = min(values)
            if float(rng[0]) < lo - 0.5 - 1e-6:
                out.append(f"{name}: {key} ('{axis['title']}') starts at {float(rng[0]):.2f}, below the data's "
                           f"minimum {lo} by more than half a unit")
    return out
