"""A Figure block as an interactive plotly figure (a div for the HTML report; plotly.js is inlined once
by the template)."""

from __future__ import annotations

from typing import Any

from harmonica.reports.model import Figure


def plotly_figure(f: Figure) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for s in f.series:
        dash = "dash" if s.key.endswith("_min") or s.key.startswith(("val/", "val_ema/")) else None
        if s.key.endswith("util_pred_median"):
            dash = "dot"
        width = 3 if s.key.endswith("/total") else 2
        fig.add_trace(go.Scatter(x=list(s.steps), y=list(s.values), name=s.key, mode="lines+markers",
                                 line={"dash": dash, "width": width}, marker={"size": 4}))
    positive = all(v > 0 for s in f.series for v in s.values)
    fig.update_layout(title=f.title, height=380, template="plotly_white", margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      xaxis_title="step", legend={"font": {"size": 10}})
    if f.title.startswith("Gradient") and positive:
        fig.update_yaxes(type="log")
    if f.floor is not None:
        fig.add_hline(y=f.floor, line={"dash": "dash", "color": "#999"}, annotation_text=f"collapse floor {f.floor:g}",
                      annotation_position="bottom right")
    for step in sorted(set(f.events)):
        fig.add_vline(x=step, line={"dash": "dot", "color": "#d62728"}, annotation_text="collapse",
                      annotation_position="top")
    return fig


def figure_div(f: Figure) -> str:
    """The figure as an HTML div that draws itself with the page's plotly.js."""
    return plotly_figure(f).to_html(full_html=False, include_plotlyjs=False,
                                    config={"displaylogo": False, "responsive": True})


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()
