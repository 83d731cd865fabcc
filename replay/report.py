"""The replay report: metrics.json, and report.html with PNGs beside it (actions, agreement, shift per
term, dynamics gap per axis or joint; a quadrotor model's fit, stock against fitted), from metrics.json's
figures, for a native bag or a foreign log, in every `s2r replay` mode."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from deploy.spec import PolicySpec

PLOT_ROWS = 500  # first rows kept for the action plot


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(metrics: dict, plot: dict, spec: PolicySpec, out_dir: Path) -> None:
    """metrics.json, and report.html with PNGs beside it: actions, agreement, shift per term, dynamics gap
    per axis/joint; and the model fit when `metrics` holds one ("sysid", from `s2r replay --fit`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    images = []
    cands = list(metrics["candidates"])
    logged = len(plot["action"]) > 0
    if logged or any(len(plot[c]) for c in cands):
        n = spec.action_dim
        fig, axes = plt.subplots(n, 1, figsize=(10, 1.6 * n + 1), sharex=True, squeeze=False)
        for j, ax in enumerate(axes[:, 0]):
            if logged:
                ax.plot(plot["action"][:, j], "k", lw=2, label="logged")
            for c in cands:
                ax.plot(plot[c][:, j], lw=1, label=c)
            ax.set_ylabel(spec.action.names[j])
        axes[0, 0].legend(loc="upper right", fontsize=7)
        axes[-1, 0].set_xlabel("control step")
        fig.suptitle(
            "logged raw actions and the candidates' actions recomputed from the logged observations"
            if logged
            else "the candidates' raw actions on observations rebuilt from the log's readings"
        )
        _save(fig, out_dir / "actions.png", images, plt)
    agreement = metrics.get("action_agreement")
    if cands:
        fig, axes = plt.subplots(1, 2 if agreement else 1, figsize=(12 if agreement else 7, 3.8), squeeze=False)
        w = 0.8 / len(cands)
        if agreement:
            x = np.arange(spec.action_dim)
            for i, c in enumerate(cands):
                per = agreement[c]["per_action"]
                axes[0, 0].bar(x + i * w, [max(per[a]["max_abs_diff"], 1e-12) for a in spec.action.names], w, label=c)
            axes[0, 0].set_xticks(x + 0.4 - w / 2, spec.action.names, rotation=45, fontsize=7)
            axes[0, 0].set_yscale("log")
            axes[0, 0].set_title("action agreement: max |recomputed - logged|")
        ax = axes[0, -1]
        terms = [t.name for t in spec.obs]
        xt = np.arange(len(terms))
        for i, c in enumerate(cands):
            ax.bar(xt + i * w, [metrics["shift"][c]["terms"][t]["rms_z"] for t in terms], w, label=c)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(xt + 0.4 - w / 2, terms, rotation=45, fontsize=7)
        ax.set_title("distribution shift: RMS z per observation term")
        ax.legend(fontsize=7)
        _save(fig, out_dir / ("agreement_shift.png" if agreement else "shift.png"), images, plt)
    gap = metrics.get("dynamics_gap")
    if gap:
        ks = list(gap["k"])
        quantities = [q for q in gap["k"][ks[0]] if q != "horizon_s"]
        fig, axes = plt.subplots(1, len(quantities), figsize=(5 * len(quantities), 3.8), squeeze=False)
        for ax, q in zip(axes[0], quantities, strict=True):
            labels = list(gap["k"][ks[0]][q])
            x = np.arange(len(labels))
            for i, k in enumerate(ks):
                ax.bar(
                    x + i * 0.8 / len(ks),
                    [max(gap["k"][k][q][a]["mean"], 1e-12) for a in labels],
                    0.8 / len(ks),
                    label=f"k={k}",
                )
            ax.set_xticks(x + 0.4 - 0.4 / len(ks), labels, rotation=45, fontsize=7)
            ax.set_yscale("log")
            ax.set_title(f"dynamics gap: mean |error| {q}")
        axes[0, 0].legend(fontsize=7)
        _save(fig, out_dir / "dynamics_gap.png", images, plt)
    body = [
        _title(metrics),
        f"<p>task {metrics['task']}, {metrics['rows']} control steps over {metrics['logged_s']:.1f} s; "
        f"{_source(metrics)}</p>",
    ]
    if "ranking" in metrics:
        body.append("<h2>Ranking</h2><p>" + html.escape(metrics["ranking"]["formula"]) + "</p>")
        body.append(
            _table(
                ["policy", "score", "sim_score", "shift"],
                [
                    [r["policy"], f"{r['score']:.4f}", f"{r['sim_score']:.4f}", f"{r['shift']:.3f}"]
                    for r in metrics["ranking"]["order"]
                ],
            )
        )
    if agreement:
        body.append(
            "<h2>Action agreement</h2>"
            + _table(
                ["policy", "flew", "max |diff|", "mean |diff|"],
                [
                    [c, str(metrics["candidates"][c]["flew"]), f"{a['max_abs_diff']:.3g}", f"{a['mean_abs_diff']:.3g}"]
                    for c, a in agreement.items()
                ],
            )
        )
    if "actions" in metrics:
        body.append(
            "<h2>Actions</h2>"
            + _table(
                ["policy", "mean |action|", "fraction at the clip"],
                [
                    [c]
                    + [
                        html.escape(", ".join(f"{k} {v:.3g}" for k, v in a[key].items()))
                        for key in ("mean_abs", "frac_at_clip")
                    ]
                    for c, a in metrics["actions"].items()
                ],
            )
        )
    body.append(
        "<h2>Task metrics from the log</h2>"
        + _table(["metric", "value"], [[k, html.escape(str(v))] for k, v in metrics["task_metrics"].items()])
    )
    if gap:
        rows = []
        for k, d in gap["k"].items():
            for q, axes_ in d.items():
                if q != "horizon_s":
                    rows.append([k, q] + [f"{axes_[a]['mean']:.3g}" for a in axes_])
        body.append(
            f"<h2>Dynamics gap</h2><p>{html.escape(gap['model'])}; {gap['windows']} windows; "
            f"cost {gap['cost_s_per_logged_s']:.3f} s per logged s</p>"
        )
        body.append(_table(["k", "quantity"] + list(next(iter(gap["k"].values()))[quantities[0]]), rows))
    body.append(
        "<h2>Stream health</h2><pre>"
        + html.escape(json.dumps({**metrics["health"], **(gap["health"] if gap else {})}, indent=1))
        + "</pre>"
    )
    if "sysid" in metrics:
        body += _sysid_sections(metrics["sysid"])
        images += metrics["sysid"]["plots"]
    _write(metrics, body, images, out_dir)


def write_sysid_report(metrics: dict, out_dir: Path) -> None:
    """metrics.json and report.html of `s2r replay --fit` alone: the fit (metrics["sysid"]) and its plots."""
    body = [_title(metrics), f"<p>{_source(metrics)}</p>"] + _sysid_sections(metrics["sysid"])
    _write(metrics, body, list(metrics["sysid"]["plots"]), out_dir)


def _title(metrics: dict) -> str:
    return f"<h1>s2r replay: {html.escape(Path(metrics.get('bag') or metrics['log']).name)}</h1>"


def _source(metrics: dict) -> str:
    """Where the figures come from: the bag, or the foreign log and its mapping; and where it was cut short."""
    cut = "; ".join(metrics["recovery_notes"])
    if "bag" in metrics:
        return "bag " + ("complete" if metrics["complete"] else "cut short: " + html.escape(cut))
    readings = f"; readings {html.escape(str(metrics['readings']))}" if "readings" in metrics else ""
    return f"foreign log read through mapping {html.escape(str(metrics['mapping']))}{readings}" + (
        f"; cut short: {html.escape(cut)}" if cut else ""
    )


def _sysid_sections(sysid: dict) -> list[str]:
    """The quadrotor model's fit: its parameters, and the k-step error of the stock and the fitted model."""
    params = sysid["parameters"]
    rows = [
        [html.escape(k), html.escape(v if isinstance(v, str) else json.dumps(v))]
        for k, v in params.items()
        if k != "grid_pos10_m"
    ]
    gap_rows = []
    for flight in ("heldout", "fit"):
        for k, stock in sysid[flight]["stock"]["k"].items():
            fitted = sysid[flight]["fitted"]["k"][k]
            gap_rows.append(
                [flight, k]
                + [
                    f"{stock[q]['norm']['mean']:.4g} &rarr; {fitted[q]['norm']['mean']:.4g}"
                    for q in ("pos_m", "vel_mps", "att_rad")
                ]
            )
    notes = "".join(f"<p>fit flight cut short: {html.escape(n)}</p>" for n in sysid["recovery_notes"]["fit"])
    return [
        "<h2>Model fit</h2>"
        f"<p>fitted on {html.escape(sysid['fit_flight'])}, evaluated on {html.escape(sysid['heldout_flight'])}; "
        f"stock: {html.escape(sysid['stock_model'])}; fitted: {html.escape(sysid['fitted_model'])}</p>" + notes,
        _table(["parameter", "value"], rows),
        "<h2>Dynamics gap, stock &rarr; fitted</h2><p>mean k-step prediction error norm over the in-flight windows</p>"
        + _table(["flight", "k", "position (m)", "velocity (m/s)", "attitude (rad)"], gap_rows),
        "<h2>Clock</h2><pre>" + html.escape(json.dumps(sysid["clock"], indent=1)) + "</pre>",
    ]


def _write(metrics: dict, body: list[str], images: list[str], out_dir: Path) -> None:
    """metrics.json and report.html (the body, then the images) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    body = body + [f'<p><img src="{name}"></p>' for name in images]
    (out_dir / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>s2r replay</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ccc}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>"
    )


def _save(fig, path: Path, images: list, plt) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    images.append(path.name)


def _table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    return (
        f"<table><tr>{h}</tr>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )
